"""lightning_memwatch: watch a generative model memorize its training data while it trains.

The public surface is the callbacks, the torchmetrics metrics and the :mod:`functional` module
(DESIGN §3); everything else is private.
"""

from lightning_memwatch import functional
from lightning_memwatch.callbacks import GeometryMonitor, MemorizationEarlyStopping
from lightning_memwatch.callbacks.likelihood import LikelihoodMonitor
from lightning_memwatch.kfold import KFoldMemorization, kfold_memorization_scores
from lightning_memwatch.metrics import DensityGap, SpectrumGap, TrainValGap
from lightning_memwatch.metrics.likelihood import LikelihoodGap

__version__ = "0.1.0.dev0"

__all__ = [
    "DensityGap",
    "GeometryMonitor",
    "KFoldMemorization",
    "LikelihoodGap",
    "LikelihoodMonitor",
    "MemorizationEarlyStopping",
    "SpectrumGap",
    "TrainValGap",
    "__version__",
    "functional",
    "kfold_memorization_scores",
]
