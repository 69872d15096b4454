"""Screenshots of the documentation and of TensorBoard on the demo (opt-in: --screenshots)."""
