"""Tests of the TensorBoard artifacts (lightning_memwatch.viz)."""
