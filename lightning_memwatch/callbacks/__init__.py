"""Lightning glue: the memwatch callbacks (DESIGN §3, §4)."""

from lightning_memwatch.callbacks.early_stopping import MemorizationEarlyStopping

__all__ = ["MemorizationEarlyStopping"]
