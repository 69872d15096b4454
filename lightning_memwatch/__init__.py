"""lightning_memwatch: watch a generative model memorize its training data while it trains.

The public surface is the callbacks, the torchmetrics metrics and the :mod:`functional` module
(DESIGN §3); everything else is private.
"""

from lightning_memwatch import functional
from lightning_memwatch.callbacks import (
    GeometryMonitor,
    MemorizationEarlyStopping,
    RecoveryMonitor,
)
from lightning_memwatch.metrics import (
    ComplexityGap,
    DensityGap,
    RecoveryGap,
    SpectrumGap,
    TrainValGap,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ComplexityGap",
    "DensityGap",
    "GeometryMonitor",
    "MemorizationEarlyStopping",
    "RecoveryGap",
    "RecoveryMonitor",
    "SpectrumGap",
    "TrainValGap",
    "__version__",
    "functional",
]
