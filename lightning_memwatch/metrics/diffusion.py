"""Diffusion families: the denoising loss and the x0-estimate's spectrum (train versus val), and
the copy tests of generated samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_memwatch.metrics.samples import SAMPLES, DataCopying
from lightning_memwatch.metrics.spectrum import SpectrumGap
from lightning_memwatch.metrics.train_val import TrainValGap

#: The statistics of each timestep of the grid (the whole loss has all of them).
TIMESTEP_STATS = ("train", "val", "gap", "effect")


class DenoisingLossGap(TrainValGap):
    """Per-sample denoising losses of the train probe against the validation probe.

    ``update(losses, split)`` takes the ``(B, K)`` losses of
    :func:`~lightning_memwatch.functional.diffusion.denoising_losses` at the ``K`` timesteps of
    the grid and records per sample their mean over the grid (descriptor ``loss``) and each
    column (descriptor ``t<name>``, one per timestep, named by ``timestep_names``).

    ``compute()`` gives ``{train,val,gap,ks_pvalue,effect,effect_lower,effect_upper}`` of the
    mean loss without a descriptor level (:class:`TrainValGap`, ``effects`` on),
    ``relative_gap = (val - train) / val`` (Webster et al. (2019)'s normalized gap, eq. 5, on
    the means: positive when the training probe is denoised better), and
    ``t<name>/{train,val,gap,effect}`` per timestep: which noise levels open first.

    Args:
        timestep_names: one name per column of the grid (``"0.05"``, ``"100"``, ...).

    Example::

        >>> metric = DenoisingLossGap(["10", "100"])
        >>> metric.update(torch.tensor([[0.1, 0.3], [0.1, 0.3]]), "train")
        >>> metric.update(torch.tensor([[0.2, 0.6], [0.2, 0.6]]), "val")
        >>> out = metric.compute()
        >>> round(out["relative_gap"].item(), 3), round(out["t100/gap"].item(), 3)
        (0.5, -0.3)
    """

    effects = True

    def __init__(self, timestep_names: Sequence[str], **kwargs: object) -> None:
        names = tuple(f"t{name}" for name in timestep_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(
                f"Expected distinct timestep names, at least one, but got {timestep_names!r}"
            )
        self.descriptors = ("loss", *names)
        super().__init__(**kwargs)

    def key(self, name: str, stat: str) -> str:
        """``stat`` for the mean loss, ``t<name>/stat`` for a timestep of the grid."""
        return stat if name == "loss" else f"{name}/{stat}"

    def update(self, losses: Tensor, split: str) -> None:
        """Record the ``(B, K)`` losses of ``split``."""
        timesteps = len(self.descriptors) - 1
        if not isinstance(losses, Tensor) or losses.ndim != 2 or losses.shape[1] != timesteps:
            got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(f"Expected `losses` of shape (B, {timesteps}) but got {got}")
        values = {"loss": losses.mean(dim=1)}
        values.update({name: losses[:, i] for i, name in enumerate(self.descriptors[1:])})
        self._append(split, values)

    def compute(self) -> dict[str, Tensor]:
        out = super().compute()
        for name in self.descriptors[1:]:
            for stat in ("ks_pvalue", "effect_lower", "effect_upper", "nonfinite"):
                out.pop(self.key(name, stat))
        out["relative_gap"] = (out["val"] - out["train"]) / out["val"]
        return out


class DenoiserSpectrumGap(SpectrumGap):
    """The spectrum descriptors of :class:`~lightning_memwatch.metrics.SpectrumGap`, each
    averaged per point over several timesteps.

    ``update(spectra, split)`` takes one ``(B, r)`` spectrum per timestep (the singular values
    of the x0-estimate's Jacobian at the same ``B`` points noised to each timestep) and records
    per point the mean of each descriptor over them; ``compute()`` gives
    ``<descriptor>/{train,val,gap,ks_pvalue,effect,effect_lower,effect_upper}``.

    Example::

        >>> metric = DenoiserSpectrumGap()
        >>> metric.update([torch.tensor([[4.0, 1.0]]), torch.tensor([[2.0, 1.0]])], "train")
        >>> metric.update([torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 1.0]])], "val")
        >>> round(metric.compute()["log_volume/gap"].item(), 4)  # (log 4 + log 2) / 2
        1.0397
    """

    effects = True

    def update(self, spectra: Sequence[Tensor], split: str) -> None:  # type: ignore[override]
        """Record the descriptors of ``spectra`` (one ``(B, r)`` per timestep) for ``split``."""
        if isinstance(spectra, Tensor) or not spectra:
            raise ValueError(
                "Expected `spectra` to be a non-empty sequence of (B, r) spectra, one per "
                f"timestep, but got {type(spectra).__name__}"
            )
        per_timestep = [self.descriptor_values(s) for s in spectra]
        self._append(
            split,
            {d: torch.stack([v[d] for v in per_timestep]).mean(dim=0) for d in self.descriptors},
        )


class SampleCopying(DataCopying):
    """:class:`~lightning_memwatch.metrics.DataCopying` (``C_T``, the copy fractions) plus the
    near-copy share of the generated and of the held-out samples.

    ``update(distances, cells, copied, sample, near)`` takes besides
    :class:`~lightning_memwatch.metrics.DataCopying`'s fields the ``(B,)`` near-copy flags
    (:func:`~lightning_memwatch.functional.copies.near_copies`: ``d_1 / d_2 < 1/3``);
    ``compute()`` adds ``near_copy_share`` (generated) and ``heldout_near_copy_share`` (what
    samples of the data distribution give), over the samples with a finite distance.

    Example::

        >>> metric = SampleCopying(cells=1, tau=0.0)
        >>> zeros, flags = torch.zeros(2, dtype=torch.long), torch.tensor([True, False])
        >>> metric.update(torch.tensor([1.0, 2.0]), zeros, ~flags, "heldout", ~flags)
        >>> metric.update(torch.tensor([0.1, 0.2]), zeros, flags, "generated", flags)
        >>> out = metric.compute()
        >>> out["near_copy_share"].item(), out["heldout_near_copy_share"].item()
        (0.5, 0.5)
    """

    def __init__(self, cells: int, *, tau: float | None = None, **kwargs: object) -> None:
        super().__init__(cells, tau=tau, **kwargs)
        for sample in SAMPLES:
            self.add_state(f"{sample}_near", default=[], dist_reduce_fx="cat")

    def update(  # type: ignore[override]
        self, distances: Tensor, cells: Tensor, copied: Tensor, sample: str, near: Tensor
    ) -> None:
        """Record a batch of ``sample`` results and their near-copy flags, ``(B,)`` each."""
        super().update(distances, cells, copied, sample)
        if near.shape != distances.shape:
            raise ValueError(
                f"Expected (B,) `near` flags like `distances` {tuple(distances.shape)} but got "
                f"{tuple(near.shape)}"
            )
        getattr(self, f"{sample}_near").append(near.detach().to(torch.float64))

    def compute(self) -> dict[str, Tensor]:
        out = super().compute()
        for sample, key in (
            ("generated", "near_copy_share"),
            ("heldout", "heldout_near_copy_share"),
        ):
            finite = ~self.samples(sample, "distances").isnan()
            flags = self.samples(sample, "near")[finite]
            out[key] = flags.mean() if flags.numel() else flags.new_tensor(math.nan)
        return out
