"""torchmetrics metrics: thin stateful wrappers over :mod:`lightning_memwatch.functional`."""

from lightning_memwatch.metrics.complexity import ComplexityGap
from lightning_memwatch.metrics.density import DensityGap
from lightning_memwatch.metrics.diffusion import (
    DenoiserSpectrumGap,
    DenoisingLossGap,
    SampleCopying,
)
from lightning_memwatch.metrics.likelihood import LikelihoodGap
from lightning_memwatch.metrics.recovery import RecoveryGap
from lightning_memwatch.metrics.samples import DataCopying
from lightning_memwatch.metrics.spectrum import SpectrumGap
from lightning_memwatch.metrics.train_val import TrainValGap

__all__ = [
    "ComplexityGap",
    "DataCopying",
    "DenoiserSpectrumGap",
    "DenoisingLossGap",
    "DensityGap",
    "LikelihoodGap",
    "RecoveryGap",
    "SampleCopying",
    "SpectrumGap",
    "TrainValGap",
]
