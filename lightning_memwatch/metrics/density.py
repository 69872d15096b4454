"""Density family: dip and decay scores (Feiszli (2017), sec. 5.3), train versus val."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memwatch.metrics.train_val import TrainValGap


class DensityGap(TrainValGap):
    """Dip and decay scores of the train probe against the validation probe.

    Feiszli (2017), sec. 5.3: the mean dip (positive = memorization) and the
    mean decay (negative = memorization). ``update(split, dip=..., decay=...)`` takes the
    per-path scores of :func:`~lightning_memwatch.functional.dip_scores` (``(B,)``) and the
    per-point scores of :func:`~lightning_memwatch.functional.decay_scores` (``(B, R)``, one
    column per radius); a point's decay is the mean over its radii, non-finite if any radius is.

    ``compute()`` gives ``{dip,decay}/{train,val,gap,ks_pvalue,nonfinite}``, and the same for
    the parts when they are given: ``dip/{prior,volume}``, ``decay/{prior,volume}`` (each score
    is the sum of its two parts) and ``decay/unreached`` (the share of lines that never reach a
    radius, NaN decays: a train share far above val is itself a sign of flat, memorized
    regions)
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

    descriptors = (
        "dip",
        "decay",
        "dip/prior",
        "dip/volume",
        "decay/prior",
        "decay/volume",
        "decay/unreached",
    )

    def update(
        self,
        split: str,
        *,
        dip: Tensor | None = None,
        decay: Tensor | None = None,
        dip_terms: tuple[Tensor, Tensor] | None = None,
        decay_terms: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> None:
        """Record per-sample ``dip`` (``(B,)``) and/or ``decay`` (``(B, R)`` or ``(B,)``), and
        optionally their parts: ``dip_terms`` ``(prior, volume)`` (each ``(B,)``, from
        :func:`~lightning_memwatch.functional.dip_terms`) and ``decay_terms``
        ``(prior, volume, unreached)`` (each ``(B, R)``, from
        :func:`~lightning_memwatch.functional.decay_terms`); a point's ``decay/unreached`` is
        ``1`` when one of its radii was never reached (a flat region), else ``0``."""
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
        if dip_terms is not None:
            values["dip/prior"], values["dip/volume"] = dip_terms
        if decay_terms is not None:
            prior, volume, unreached = decay_terms
            values["decay/prior"], values["decay/volume"] = prior.mean(-1), volume.mean(-1)
            values["decay/unreached"] = unreached.any(dim=-1).to(torch.float64)
        self._append(split, values)
