"""lightning_memwatch: watch a generative model memorize its training data while it trains.

The public surface is the callbacks (and :func:`fit_summary`, the verdict they print at the end
of a fit, as a dict), the torchmetrics metrics, the :mod:`functional` module and the offline
K-fold memorization score; everything else is private.
"""

from lightning_memwatch import functional
from lightning_memwatch.callbacks import (
    DiffusionMonitor,
    EffectAgreement,
    GeometryMonitor,
    LikelihoodMonitor,
    MemorizationEarlyStopping,
    RecoveryMonitor,
    SampleMonitor,
    fit_summary,
)
from lightning_memwatch.kfold import KFoldMemorization, kfold_memorization_scores
from lightning_memwatch.metrics import (
    ComplexityGap,
    DataCopying,
    DensityGap,
    LikelihoodGap,
    RecoveryGap,
    SpectrumGap,
    TrainValGap,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ComplexityGap",
    "DataCopying",
    "DensityGap",
    "DiffusionMonitor",
    "EffectAgreement",
    "GeometryMonitor",
    "KFoldMemorization",
    "LikelihoodGap",
    "LikelihoodMonitor",
    "MemorizationEarlyStopping",
    "RecoveryGap",
    "RecoveryMonitor",
    "SampleMonitor",
    "SpectrumGap",
    "TrainValGap",
    "__version__",
    "fit_summary",
    "functional",
    "kfold_memorization_scores",
]
