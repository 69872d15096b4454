"""Likelihood family: importance-sampled log p(x) (van den Burg & Williams (2021), eq. 9),
train versus val."""

from __future__ import annotations

from torch import Tensor

from lightning_memwatch.metrics.train_val import TrainValGap


class LikelihoodGap(TrainValGap):
    """Per-sample ``log p(x)`` of the train probe against the validation probe.

    ``update(split, log_px)`` takes the ``(B,)`` estimates of
    :func:`~lightning_memwatch.functional.importance_log_likelihood`
    (van den Burg & Williams (2021), eq. 9). ``compute()`` gives
    ``{train,val,gap,ks_pvalue,nonfinite,effect,effect_lower,effect_upper}`` (no descriptor
    level; see
    :class:`~lightning_memwatch.metrics.train_val.TrainValGap`): the mean log-likelihood per
    split and ``gap = train - val``. **A positive gap = memorization**: the model gives its
    training samples more probability than held-out samples of the same distribution.

    Example::

        >>> import torch
        >>> metric = LikelihoodGap()
        >>> metric.update(torch.tensor([-10.0, -12.0]), "train")
        >>> metric.update(torch.tensor([-20.0, float("nan"), -30.0]), "val")
        >>> out = metric.compute()
        >>> [round(out[key].item(), 4) for key in ("train", "val", "gap")]
        [-11.0, -25.0, 14.0]
        >>> out["nonfinite"].item()
        1
    """

    descriptors = ("likelihood",)
    descriptor_level = False
    #: ``effect``, ``effect_lower``, ``effect_upper`` of ``log p(x)``, train against val
    #: (memorization: toward +1, training samples more likely).
    effects = True

    def update(self, log_px: Tensor, split: str) -> None:
        """Record per-sample log-likelihoods ``log_px`` (``(B,)``) for ``split``."""
        self._append_one(log_px, split, "log_px")
