"""Spectrum family: psi, nu, intrinsic dimension and log condition, train versus val."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memwatch.functional.spectrum import (
    intrinsic_dim,
    local_rank,
    local_scaling,
    log_condition,
)
from lightning_memwatch.metrics.train_val import TrainValGap


class SpectrumGap(TrainValGap):
    """Spectrum descriptors of the train probe against the validation probe.

    ``update(s, split)`` takes singular values ``s`` (``(B, r)``, from
    :func:`~lightning_memwatch.functional.singular_values`) and records per point:

    - ``log_volume``: local scaling ``psi = sum_{i<=k} log s_i``
      (Humayun et al. (2024), eq. 2);
    - ``local_rank``: ``nu = exp(-sum p_i log p_i)`` (Humayun et al. (2024), sec. 2);
    - ``intrinsic_dim``: ``k = #{i : s_i > rtol s_1}`` (Feiszli (2017), sec. 3);
    - ``log_condition``: ``log(s_1 / s_k)`` (Ramirez et al. (poster)).

    ``compute()`` gives ``<descriptor>/{train,val,gap,ks_pvalue,nonfinite}``
    (see :class:`~lightning_memwatch.metrics.train_val.TrainValGap`).

    Args:
        rtol: relative threshold for the non-degenerate singular values (default ``1e-4``).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example::

        >>> import torch
        >>> metric = SpectrumGap()
        >>> metric.update(torch.tensor([[4.0, 1.0], [4.0, 1.0]]), "train")
        >>> metric.update(torch.tensor([[1.0, 1.0]]), "val")
        >>> out = metric.compute()
        >>> round(out["log_volume/gap"].item(), 4)  # log 4 - log 1
        1.3863
    """

    descriptors = ("log_volume", "local_rank", "intrinsic_dim", "log_condition")

    def __init__(self, rtol: float = 1e-4, **kwargs: object) -> None:
        if not isinstance(rtol, (int, float)) or not 0.0 <= rtol < 1.0:
            raise ValueError(f"Expected `rtol` to be a float in [0, 1) but got {rtol!r}")
        super().__init__(**kwargs)
        self.rtol = float(rtol)

    def update(self, s: Tensor, split: str) -> None:
        """Record the descriptors of singular values ``s`` (``(B, r)``) for ``split``."""
        self._append(split, self.descriptor_values(s))

    def descriptor_values(self, s: Tensor) -> dict[str, Tensor]:
        """The per-point descriptors of singular values ``s`` (``(B, r)``), ``(B,)`` each."""
        if not isinstance(s, Tensor) or s.ndim != 2:
            raise ValueError(f"Expected `s` to be a (B, r) tensor of singular values but got {s!r}")
        k = intrinsic_dim(s, rtol=self.rtol)
        return {
            "log_volume": local_scaling(s, k=k.clamp_min(0)),
            "local_rank": local_rank(s),
            "intrinsic_dim": torch.where(k >= 0, k.to(torch.float64), torch.nan),
            "log_condition": log_condition(s, k=k.clamp_min(0)),
        }
