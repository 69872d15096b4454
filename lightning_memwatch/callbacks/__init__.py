"""Lightning callbacks: thin glue around :mod:`lightning_memwatch.metrics` (no maths here)."""

from lightning_memwatch.callbacks.diffusion import DiffusionMonitor
from lightning_memwatch.callbacks.early_stopping import MemorizationEarlyStopping
from lightning_memwatch.callbacks.geometry import GeometryMonitor
from lightning_memwatch.callbacks.likelihood import LikelihoodMonitor
from lightning_memwatch.callbacks.machinery.summary import fit_summary
from lightning_memwatch.callbacks.recovery import RecoveryMonitor
from lightning_memwatch.callbacks.rules import EffectAgreement
from lightning_memwatch.callbacks.samples import SampleMonitor

__all__ = [
    "DiffusionMonitor",
    "EffectAgreement",
    "GeometryMonitor",
    "LikelihoodMonitor",
    "MemorizationEarlyStopping",
    "RecoveryMonitor",
    "SampleMonitor",
    "fit_summary",
]
