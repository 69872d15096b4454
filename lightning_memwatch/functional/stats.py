"""Train-versus-validation statistics shared by every family.

A geometric or reconstruction number becomes a memorization signal only by comparing the
training probe with the validation probe. ``ks_pvalue`` is the two-sample
Kolmogorov-Smirnov test and ``mre_gap`` the normalized median gap, both from
Webster et al. (2019), sec. 3.3; ``mann_whitney_z`` the rank test of Meehan et al.'s
data-copying statistic and ``rank_effect`` Cliff's delta with DeLong bounds.
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

    Webster et al. (2019), sec. 3.3: the probability that two samples of one
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

    Webster et al. (2019), eq. 4 (``MRE`` = median recovery error) and eq. 5;
    a gap above ``0.10`` flags overfitting. Non-finite errors are dropped; NaN when a side has
    no finite error or ``MRE_val = 0``.

    The sign is kept, as eq. 5 writes it: a negative gap means the held-out samples are
    recovered *better* than the training samples (no sign of memorization; small probes give
    it by chance). Webster et al.'s code takes ``abs()`` of the difference
    (``torch.abs(mre_test - mre_train) / mre_test``), and their Table 1 lists it so (MNIST
    DCGAN: 8.85e-2 where the MREs, 3.00e-2 train and 2.75e-2 val, give -9.1e-2): an absolute
    gap would read a run that recovers held-out data better as overfitting above the 0.10 line,
    and a one-sided rule (``mre_gap > 0.10``) needs the sign.

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


def mann_whitney_z(a: Tensor, b: Tensor, *, tie_correction: bool = False) -> Tensor:
    """Mann-Whitney z-score of sample ``a`` against sample ``b``: negative when ``a`` tends to
    be smaller. A 0-dim float64 tensor.

    ``U_a = #{(i, j): a_i > b_j} + #{(i, j): a_i = b_j} / 2`` (from the mid-ranks of the pooled
    sample) and, with the normal approximation under the null and a continuity correction of
    one half towards "``a`` smaller" (as Meehan et al.'s reference code does it),
    ``Z_U = (U_a - n_a n_b / 2 + 1/2) / sigma``, ``sigma^2 = n_a n_b (N + 1) / 12``,
    ``N = n_a + n_b``: the variance of untied samples, as Meehan et al. (2020), sec. 3, take it
    for their data-copying statistic
    (:func:`~lightning_memwatch.functional.data_copying.data_copying_statistic`).

    ``tie_correction=True``: ``sigma^2 = n_a n_b / 12 * ((N + 1) - sum_g (t_g^3 - t_g) / (N (N -
    1)))``, ``t_g`` the sizes of the groups of tied values; this is ``Phi^{-1}`` of
    ``scipy.stats.mannwhitneyu(a, b, alternative="less", method="asymptotic").pvalue``. Ties
    shrink ``sigma``, so the z-score of exact copies (many distances 0) is larger in size.

    NaN values are dropped; 0 when a sample is empty, or when every value is tied and
    ``tie_correction`` (zero variance: no evidence either way).

    Example::

        >>> import torch
        >>> z = mann_whitney_z(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0]))
        >>> round(z.item(), 4)  # U = 0: (0 - 4.5 + 0.5) / sqrt(9 * 7 / 12)
        -1.7457
        >>> copies, fresh = torch.zeros(3), torch.tensor([4.0, 5.0, 6.0])  # tied at 0
        >>> round(mann_whitney_z(copies, fresh, tie_correction=True).item(), 4)
        -1.8550
    """
    a, b = a.reshape(-1).to(torch.float64), b.reshape(-1).to(torch.float64)
    a, b = a[~a.isnan()], b[~b.isnan()]
    n_a, n_b = len(a), len(b)
    n = n_a + n_b
    if n_a == 0 or n_b == 0:
        return a.new_zeros(())
    values, order = torch.sort(torch.cat([a, b]))
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    mid_ranks = torch.cumsum(counts, 0) - (counts - 1) / 2  # 1-based ranks, ties averaged
    rank_sum = mid_ranks[inverse][order < n_a].sum()
    u = rank_sum - n_a * (n_a + 1) / 2
    ties = (counts.pow(3) - counts).sum() / (n * (n - 1)) if tie_correction else 0.0
    variance = n_a * n_b / 12 * ((n + 1) - ties)
    if not variance > 0:
        return a.new_zeros(())
    return (u - n_a * n_b / 2 + 0.5) / math.sqrt(float(variance))


#: One-sided 95 % normal quantile: the default of :func:`rank_effect`'s bounds.
Z_95 = 1.6448536269514722


def rank_effect(
    a: Tensor | np.ndarray, b: Tensor | np.ndarray, z: float = Z_95
) -> tuple[float, float, float]:
    """Cliff's delta of ``a`` against ``b``, DeLong bounds: ``(delta, lower, upper)``.

    ``delta = P(a > b) - P(a < b) = 2 AUC - 1`` (ties count half in ``AUC``), the Mann-Whitney
    ``AUC = U / (n_a n_b)`` moved to ``[-1, 1]``: ``0`` when the two samples come from one
    distribution, ``+-1`` when they do not overlap. Unlike a p-value it does not grow with the
    sample sizes: a harmless shift keeps its size at any probe size, only the bounds tighten.

    Variance (DeLong, DeLong & Clarke-Pearson 1988, eq. 3-5): with the placements
    ``V_a[i] = mean_j psi(a_i, b_j)``, ``V_b[j] = mean_i psi(a_i, b_j)``,
    ``psi(x, y) = 1[x > y] + 1/2 1[x = y]``,
    ``Var(AUC) = s^2(V_a) / n_a + s^2(V_b) / n_b`` (sample variances, ``ddof = 1``), so
    ``Var(delta) = 4 Var(AUC)``; the bounds are ``delta -+ z sqrt(Var(delta))`` clipped to
    ``[-1, 1]`` (``z = 1.645``: one-sided 95 %). Non-finite values are dropped; NaN for all three
    when a side has fewer than two finite values.

    Example::

        >>> import torch
        >>> rank_effect(torch.tensor([3.0, 4.0, 5.0]), torch.tensor([0.0, 1.0, 2.0]))
        (1.0, 1.0, 1.0)
        >>> delta, lower, upper = rank_effect(torch.arange(8.0), torch.arange(8.0))
        >>> delta, round(lower, 3), round(upper, 3)
        (0.0, -0.504, 0.504)
    """
    a_np, b_np = _finite_numpy(a, "a"), _finite_numpy(b, "b")
    if a_np.size < 2 or b_np.size < 2:
        return math.nan, math.nan, math.nan
    x, y = torch.from_numpy(a_np), torch.from_numpy(b_np)
    diff = x[:, None] - y[None, :]
    psi = (diff > 0).to(torch.float64) + 0.5 * (diff == 0).to(torch.float64)
    auc = psi.mean()
    variance = psi.mean(dim=1).var() / len(x) + psi.mean(dim=0).var() / len(y)
    delta = float(2.0 * auc - 1.0)
    half = z * 2.0 * float(variance.sqrt())
    return delta, max(-1.0, delta - half), min(1.0, delta + half)
