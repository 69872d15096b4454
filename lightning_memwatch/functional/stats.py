"""Train-versus-validation statistics shared by every family.

A geometric or reconstruction number becomes a memorization signal only by comparing the
training probe with the validation probe (DESIGN §2). ``ks_pvalue`` is the two-sample
Kolmogorov-Smirnov test and ``mre_gap`` the normalized median gap, both from
``papers/webster_latent_recovery.txt`` §3.3.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats
from torch import Tensor


def _finite_numpy(values: Tensor | np.ndarray, name: str) -> np.ndarray:
    """Finite values of a 1-D sample as float64 numpy; NaN and inf are dropped."""
    if isinstance(values, Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"Expected `{name}` to be a 1-D sample but got shape {array.shape}")
    return array[np.isfinite(array)]


def ks_pvalue(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov p-value of samples ``a`` and ``b`` (non-finite dropped).

    ``papers/webster_latent_recovery.txt`` §3.3: the probability that two samples of one
    distribution differ by more than the observed maximum gap between their empirical CDFs;
    ``p < 0.01`` flags overfitting. Computed by ``scipy.stats.ks_2samp`` (two-sided, exact for
    small samples). NaN when either sample has no finite value.

    Example::

        >>> import torch
        >>> ks_pvalue(torch.arange(10.0), torch.arange(10.0))
        1.0
        >>> ks_pvalue(torch.arange(10.0), torch.arange(10.0) + 100.0) < 1e-4
        True
    """
    a, b = _finite_numpy(a, "a"), _finite_numpy(b, "b")
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(stats.ks_2samp(a, b).pvalue)


def mre_gap(errors_train: Tensor | np.ndarray, errors_val: Tensor | np.ndarray) -> float:
    """Normalized median-recovery-error gap ``(MRE_val - MRE_train) / MRE_val``.

    ``papers/webster_latent_recovery.txt`` eq. 4 (``MRE`` = median recovery error) and eq. 5;
    a gap above ``0.10`` flags overfitting. Non-finite errors are dropped; NaN when a side has
    no finite error or ``MRE_val = 0``.

    Example::

        >>> import torch
        >>> mre_gap(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0]))
        0.6
    """
    train, val = (
        _finite_numpy(errors_train, "errors_train"),
        _finite_numpy(errors_val, "errors_val"),
    )
    if train.size == 0 or val.size == 0:
        return math.nan
    mre_train, mre_val = float(np.median(train)), float(np.median(val))
    if mre_val == 0.0:
        return math.nan
    return (mre_val - mre_train) / mre_val
