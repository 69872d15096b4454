"""Density family: dip and decay scores (feiszli §5.3), train versus val."""

from __future__ import annotations

from torch import Tensor

from lightning_memwatch.metrics.train_val import TrainValGap


class DensityGap(TrainValGap):
    """Dip and decay scores of the train probe against the validation probe.

    ``papers/feiszli_latent_geometry.txt`` §5.3: the mean dip (positive = memorization) and the
    mean decay (negative = memorization). ``update(split, dip=..., decay=...)`` takes the
    per-path scores of :func:`~lightning_memwatch.functional.dip_scores` (``(B,)``) and the
    per-point scores of :func:`~lightning_memwatch.functional.decay_scores` (``(B, R)``, one
    column per radius); a point's decay is the mean over its radii, non-finite if any radius is.

    ``compute()`` gives ``{dip,decay}/{train,val,gap,ks_pvalue,nonfinite}``
    (see :class:`~lightning_memwatch.metrics.train_val.TrainValGap`).

    Example::

        >>> import torch
        >>> metric = DensityGap()
        >>> metric.update("train", dip=torch.tensor([1.0, 3.0]), decay=torch.tensor([[-2.0, -4.0]]))
        >>> metric.update("val", dip=torch.tensor([0.5, float("nan")]))
        >>> out = metric.compute()
        >>> [round(out[f"dip/{key}"].item(), 4) for key in ("train", "val", "gap", "ks_pvalue")]
        [2.0, 0.5, 1.5, 0.6667]
        >>> out["dip/nonfinite"].item()
        1
    """

    descriptors = ("dip", "decay")

    def update(self, split: str, *, dip: Tensor | None = None, decay: Tensor | None = None) -> None:
        """Record per-sample ``dip`` (``(B,)``) and/or ``decay`` (``(B, R)`` or ``(B,)``)."""
        values = {}
        if dip is not None:
            if dip.ndim != 1:
                raise ValueError(f"Expected `dip` to be a (B,) tensor but got {tuple(dip.shape)}")
            values["dip"] = dip
        if decay is not None:
            if decay.ndim not in (1, 2):
                raise ValueError(
                    f"Expected `decay` to be a (B, R) or (B,) tensor but got {tuple(decay.shape)}"
                )
            values["decay"] = decay.mean(dim=-1) if decay.ndim == 2 else decay
        self._append(split, values)
