"""Complexity family: local complexity (Humayun et al. (2024), sec. 2), train versus val."""

from __future__ import annotations

from torch import Tensor

from lightning_memwatch.metrics.train_val import TrainValGap


class ComplexityGap(TrainValGap):
    """Local complexity of the train probe against the validation probe.

    Humayun et al. (2024), sec. 2: per point, the number of activation boundaries of
    a piecewise-linear decoder inside the l1 ball of radius ``r`` around its latent
    (:func:`~lightning_memwatch.functional.local_complexity`). One descriptor, ``complexity``,
    logged without a descriptor level (``memwatch/complexity/{train,val,gap}``):
    ``compute()`` gives ``{train,val,gap,ks_pvalue,nonfinite}``
    (see :class:`~lightning_memwatch.metrics.train_val.TrainValGap`); the per-sample counts are
    ``samples("complexity", split)``.

    Example::

        >>> import torch
        >>> metric = ComplexityGap()
        >>> metric.update(torch.tensor([4.0, 6.0]), "train")
        >>> metric.update(torch.tensor([1.0, 2.0, float("nan")]), "val")
        >>> out = metric.compute()
        >>> [round(out[key].item(), 4) for key in ("train", "val", "gap", "ks_pvalue")]
        [5.0, 1.5, 3.5, 0.3333]
        >>> out["nonfinite"].item()
        1
    """

    descriptors = ("complexity",)
    descriptor_level = False

    def update(self, counts: Tensor, split: str) -> None:
        """Record per-sample ``counts`` (``(B,)``) for ``split``."""
        self._append_one(counts, split, "counts")
