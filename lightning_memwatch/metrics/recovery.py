"""Recovery family: per-sample latent-recovery errors (Webster et al. (2019), sec. 3.3), train
versus val."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_memwatch.functional.stats import ks_pvalue, mre_gap, rank_effect
from lightning_memwatch.metrics.train_val import EFFECT_STATS, TrainValGap


class RecoveryGap(TrainValGap):
    """Recovery errors of the train probe against the validation probe.

    Webster et al. (2019), eq. 4, 5 and sec. 3.3: the median recovery error (MRE) of
    each split, the normalized gap ``(MRE_val - MRE_train) / MRE_val`` (above ``0.10`` flags
    overfitting) and the two-sample KS p-value of the two error samples (below ``0.01`` flags
    overfitting). ``update(errors, split)`` takes the per-sample errors ``e(y)`` of
    :func:`~lightning_memwatch.functional.recover_latents`.

    ``compute()`` gives ``mre/train``, ``mre/val`` (medians of the finite errors), ``mre_gap``,
    ``ks_pvalue``, ``nonfinite`` (errors dropped, train and val together) and ``effect``,
    ``effect_lower``, ``effect_upper``: Cliff's delta ``P(e_train > e_val) - P(e_train < e_val)``
    and its one-sided 95 % DeLong bounds
    (:func:`~lightning_memwatch.functional.stats.rank_effect`); memorization drives it to -1.
    Unlike the
    descriptor families (means, ``gap = train - val``) the aggregate is the median and the gap is
    Webster et al.'s normalized one.

    Example::

        >>> import torch
        >>> metric = RecoveryGap()
        >>> metric.update(torch.tensor([1.0, 2.0, 3.0]), "train")
        >>> metric.update(torch.tensor([4.0, 5.0, 6.0, float("nan")]), "val")
        >>> out = metric.compute()
        >>> [round(out[key].item(), 4) for key in ("mre/train", "mre/val", "mre_gap", "ks_pvalue")]
        [2.0, 5.0, 0.6, 0.1]
        >>> out["nonfinite"].item()
        1
    """

    descriptors = ("errors",)
    #: ``effect``, ``effect_lower``, ``effect_upper``: Cliff's delta of the train errors against
    #: the val errors and its bounds (memorization: well below 0, train errors below val).
    effects = True

    def update(self, errors: Tensor, split: str) -> None:
        """Record the per-sample recovery ``errors`` (``(B,)``) of probe ``split``."""
        self._append_one(errors, split, "errors")

    def compute(self) -> dict[str, Tensor]:
        train, val = self._samples("errors", "train"), self._samples("errors", "val")
        out = {}
        for split, values in (("train", train), ("val", val)):
            finite = values[torch.isfinite(values)]
            # torch.median picks the lower of the two middle values; Webster et al.'s median is
            # numpy's
            out[f"mre/{split}"] = (
                finite.quantile(0.5) if finite.numel() else values.new_tensor(math.nan)
            )
        out["mre_gap"] = train.new_tensor(mre_gap(train, val))
        out["ks_pvalue"] = train.new_tensor(ks_pvalue(train, val))
        out["nonfinite"] = (~torch.isfinite(train)).sum() + (~torch.isfinite(val)).sum()
        if self.effects:
            values = rank_effect(train, val)
            out.update({s: train.new_tensor(v) for s, v in zip(EFFECT_STATS, values, strict=True)})
        return out
