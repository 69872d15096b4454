"""Lightning callbacks: thin glue around :mod:`lightning_memwatch.metrics` (no maths here)."""

from lightning_memwatch.callbacks.early_stopping import MemorizationEarlyStopping
from lightning_memwatch.callbacks.geometry import GeometryMonitor
from lightning_memwatch.callbacks.likelihood import LikelihoodMonitor

__all__ = ["GeometryMonitor", "MemorizationEarlyStopping"]
__all__ += ["LikelihoodMonitor"]
