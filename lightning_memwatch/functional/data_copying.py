"""Sample-based copying tests: Meehan et al.'s three-sample data-copying statistic ``C_T`` and
the share of generated samples that sit inside a training sample's nearest-neighbour ball.

Meehan, Chaudhuri & Dasgupta, "A Non-Parametric Test to Detect Data-Copying in Generative
Models" (AISTATS 2020; "Meehan et al." below). With a training sample ``T``, a held-out sample
``P_n`` of the data distribution and ``m`` generated samples ``Q_m``, and ``d(x)`` the distance
from ``x`` to its nearest training sample:

- partition the space into cells ``pi`` by k-means on ``T`` (sec. 3);
- in each cell, the Mann-Whitney z-score ``Z_U(pi)`` of the generated samples' distances
  ``{d(q)}`` against the held-out samples' ``{d(p)}`` (sec. 3): negative when the generated samples
  of that cell are closer to the training samples than fresh samples of the distribution are;
- ``C_T = sum_{pi in Pi_tau} P_n(pi) Z_U(pi) / sum_{pi in Pi_tau} P_n(pi)``, ``P_n(pi)`` the
  share of held-out samples in ``pi`` and ``Pi_tau`` the cells holding more than ``tau m``
  generated samples (sec. 3, the data-copying statistic).

``C_T << 0``: data copying; ``C_T >> 0``: underfitting (the samples stay away from the training
data); near 0: neither. Under the null (generated and held-out samples from one distribution)
each ``Z_U(pi)`` is about standard normal, so ``C_T`` has mean 0 and standard deviation about
``1 / sqrt(number of cells)``.

No paper text was at hand when this was written; the details below follow the paper as
remembered and the authors' reference code (``casey-meehan/data-copying``) and are stated where
they are used: the continuity correction of ``Z_U``, the nearest training sample looked up among
the cell's own training samples, and the default ``tau = 20 / m``.

By default ``C_T`` is the authors' definition: ``Z_U`` with the Mann-Whitney variance of
untied samples, ``n_a n_b (N + 1) / 12``, and a cell counted when it holds *more than*
``tau m`` generated samples (their code's ``Q_m(pi) > tau``, with the comment "only accept cells
with >20 samples"). ``tie_correction=True`` gives the tie-corrected variance instead. It differs
only where distances tie, i.e. exact copies (distance 0 to a training sample): measured on the
authors' moons setting (2,000 training, 1,000 held-out, 5 k-means cells) with 1,000 exact
copies as the generated samples, ``C_T`` is -17.43 by default and -18.63 tie-corrected; with
500 copies and 500 fresh draws, -8.711 and -8.782; on 297 exact copies of 1,000 training digits
(``load_digits``, 4 cells) -12.14 and -12.47; on fresh draws the two are equal (moons) or within
2e-5 (digits, whose integer pixels give a few tied distances).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.kmeans import assign_cells, flatten64, kmeans
from lightning_memwatch.functional.neighbours import nearest_neighbours, project
from lightning_memwatch.functional.stats import mann_whitney_z

#: A cell enters ``C_T`` with more than this many generated samples when ``tau`` is not given
#: (``tau = 20 / m``): the authors' moons experiment passes ``tau = 20 / len(Qm)`` to a
#: ``Q_m(pi) > tau`` rule ("only accept cells with >20 samples"); it is also about the size from
#: which the normal approximation of the Mann-Whitney U is customary.
MIN_GENERATED = 20


def _check_cells(name: str, values: Tensor, cells: Tensor, k: int) -> None:
    if values.ndim != 1 or cells.shape != values.shape:
        raise ValueError(
            f"Expected (B,) `{name}_distances` and `{name}_cells` of one length but got "
            f"{tuple(values.shape)} and {tuple(cells.shape)}"
        )
    if len(cells) and (cells.min() < 0 or cells.max() >= k):
        raise ValueError(f"Expected `{name}_cells` in [0, {k}) but got values outside")


def data_copying_cells(
    heldout_distances: Tensor,
    heldout_cells: Tensor,
    generated_distances: Tensor,
    generated_cells: Tensor,
    *,
    cells: int,
    tie_correction: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per cell: ``Z_U(pi)`` of the generated against the held-out distances
    (:func:`mann_whitney_z`, with or without its ``tie_correction``), and the held-out and
    generated sample counts. Three ``(cells,)`` tensors (float64, long, long). Samples with a
    NaN distance are left out of everything.

    Example::

        >>> heldout, generated = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.1, 0.2, 9.0])
        >>> z, n, m = data_copying_cells(heldout, torch.tensor([0, 0, 1]),
        ...                              generated, torch.tensor([0, 0, 1]), cells=2)
        >>> (z < 0).tolist(), n.tolist(), m.tolist()
        ([True, False], [2, 1], [2, 1])
    """
    check_int("cells", cells)
    _check_cells("heldout", heldout_distances, heldout_cells, cells)
    _check_cells("generated", generated_distances, generated_cells, cells)
    keep_p, keep_q = ~heldout_distances.isnan(), ~generated_distances.isnan()
    p, p_cells = heldout_distances[keep_p], heldout_cells[keep_p]
    q, q_cells = generated_distances[keep_q], generated_cells[keep_q]
    z = torch.stack(
        [
            mann_whitney_z(q[q_cells == c], p[p_cells == c], tie_correction=tie_correction)
            for c in range(cells)
        ]
    )
    return (
        z,
        torch.bincount(p_cells, minlength=cells),
        torch.bincount(q_cells, minlength=cells),
    )


def data_copying_from_distances(
    heldout_distances: Tensor,
    heldout_cells: Tensor,
    generated_distances: Tensor,
    generated_cells: Tensor,
    *,
    cells: int,
    tau: float | None = None,
    tie_correction: bool = False,
) -> Tensor:
    """Meehan et al.'s ``C_T`` from the per-sample nearest-training distances and cells (sec. 3).

    ``C_T = sum_{pi: Q_m(pi) > tau} P_n(pi) Z_U(pi) / sum_{pi: Q_m(pi) > tau} P_n(pi)`` with
    ``P_n(pi)``, ``Q_m(pi)`` the shares of held-out and generated samples in cell ``pi`` and
    ``Z_U(pi)`` from :func:`data_copying_cells`. ``tau=None``: ``20 / m``, a cell needs more
    than :data:`MIN_GENERATED` generated samples. The authors' rule is strict (``>``, module
    docstring): a cell of exactly ``tau m`` generated samples is left out. ``tie_correction``:
    the tie-corrected ``Z_U`` (:func:`mann_whitney_z`); off by default, as the authors define
    it. A 0-dim float64 tensor; NaN when no cell with enough generated samples holds a held-out
    sample. Samples with a NaN distance are left out.

    Example::

        >>> heldout, generated = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
        >>> cell = torch.arange(2)  # one held-out and one generated sample per cell
        >>> data_copying_from_distances(heldout, cell, generated, cell, cells=2, tau=0.0).item()
        1.0
        >>> data_copying_from_distances(heldout, cell, generated, cell, cells=2, tau=0.5).isnan()
        tensor(True)

    Here cell 1's ``Z_U = (1 - 1/2 + 1/2) / sqrt(1 * 1 * 3 / 12) = 2`` and cell 0's is 0; with
    ``tau=0.5`` no cell holds more than ``0.5 m = 1`` generated sample.
    """
    if tau is not None and (isinstance(tau, bool) or not 0 <= tau <= 1):
        raise ValueError(
            f"Expected `tau` to be a share of the generated samples, in [0, 1], got {tau!r}"
        )
    z, heldout_counts, generated_counts = data_copying_cells(
        heldout_distances,
        heldout_cells,
        generated_distances,
        generated_cells,
        cells=cells,
        tie_correction=tie_correction,
    )
    if tau is None:
        enough = generated_counts > MIN_GENERATED
    else:  # shares, as the authors compare them: tau * m may round below a count
        enough = generated_counts.to(torch.float64) / max(int(generated_counts.sum()), 1) > tau
    weights = heldout_counts.to(torch.float64) * enough
    if not weights.sum() > 0:
        return z.new_tensor(math.nan)
    return (weights * z).sum() / weights.sum()


def data_copying_statistic(
    train: Tensor,
    heldout: Tensor,
    generated: Tensor,
    *,
    cells: int,
    tau: float | None = None,
    within_cell: bool = True,
    projection: tuple[Tensor, Tensor] | None = None,
    iterations: int = 50,
    generator: torch.Generator | None = None,
    tie_correction: bool = False,
) -> Tensor:
    """Meehan et al.'s data-copying statistic ``C_T`` of generated samples (sec. 3).

    ``cells`` cells by :func:`~lightning_memwatch.functional.kmeans.kmeans` on ``train``
    (``iterations``, ``generator``); held-out and generated samples go to their nearest
    centroid's cell; ``d(x)`` is the distance to the nearest training sample of ``x``'s cell
    (``within_cell=True``, the authors' reference code) or of all of ``train``; then
    :func:`data_copying_from_distances` (``tau``, ``tie_correction``). Samples are flattened;
    ``projection`` (``(mean, components)`` of
    :func:`~lightning_memwatch.functional.neighbours.pca_projection`, fitted once on the
    training reference and kept by the caller) is applied to all three first.

    Returns:
        0-dim float64: ``<< 0`` data copying, ``>> 0`` underfitting, near 0 neither (null
        spread about ``1 / sqrt(cells)``).

    Example::

        >>> train = torch.arange(40.0)[:, None]
        >>> copies = train[:30] + 0.01  # a cell needs more than 20 generated samples
        >>> fresh = torch.arange(40.0)[:, None] + 0.5
        >>> bool(data_copying_statistic(train, fresh, copies, cells=1) < -5)
        True
    """
    train, heldout, generated = (project(x, projection) for x in (train, heldout, generated))
    centroids, train_cells = kmeans(train, cells, iterations=iterations, generator=generator)
    found = {}
    for name, x in (("heldout", heldout), ("generated", generated)):
        x_cells = assign_cells(x, centroids)
        if within_cell:
            d, _ = nearest_neighbours(x, train, x_cells=x_cells, reference_cells=train_cells)
        else:
            d, _ = nearest_neighbours(x, train)
        found[name] = (d, x_cells)
    return data_copying_from_distances(
        *found["heldout"],
        *found["generated"],
        cells=cells,
        tau=tau,
        tie_correction=tie_correction,
    )


def copied(
    train: Tensor,
    generated: Tensor,
    *,
    ratio: float = 1.0,
    train_distances: Tensor | None = None,
) -> Tensor:
    """Whether each generated sample lies inside its nearest training sample's nearest-neighbour
    ball: ``(B,)`` bool.

    ``copied(q) = ||q - t(q)|| < ratio * rho(t(q))``, ``t(q)`` the training sample nearest to
    ``q`` and ``rho(t)`` the distance from ``t`` to its own nearest other training sample. With
    ``ratio = 1`` this is the hypothesis test of the authenticity score of Alaa et al. 2022
    ("How Faithful is your Synthetic Data?", ICML 2022): a generated sample closer to a real
    training sample than any other training sample is, is deemed copied (not authentic). It is
    related to, but not the same as, the nearest-to-second-nearest distance-ratio rule of the
    diffusion memorization studies (Yoon et al. 2023, Gu et al. 2023: ``d_1 / d_2 < 1/3``).
    A sample with a NaN distance is not counted as copied. ``train`` needs two samples or more;
    ``train_distances`` may pass the ``rho(t)`` of every training sample
    (``nearest_neighbours(train, train, exclude_self=True)[0]``) when they are already known.

    Example::

        >>> train = torch.tensor([[0.0], [1.0], [3.0]])
        >>> copied(train, torch.tensor([[0.1], [2.0], [2.9]])).tolist()
        [True, False, True]
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        raise ValueError(f"Expected `ratio` to be a positive number but got {ratio!r}")
    train = flatten64(train)
    if len(train) < 2:
        raise ValueError(f"Expected at least 2 training samples but got {len(train)}")
    own = train_distances
    if own is None:
        own, _ = nearest_neighbours(train, train, exclude_self=True)
    elif own.shape != (len(train),):
        raise ValueError(
            f"Expected `train_distances` of shape ({len(train)},) but got {tuple(own.shape)}"
        )
    distances, nearest = nearest_neighbours(generated, train)
    return distances < ratio * own[nearest.clamp(min=0)]


def copy_fraction(train: Tensor, generated: Tensor, *, ratio: float = 1.0) -> Tensor:
    """The share of generated samples that are :func:`copied` (``1 -`` Alaa et al. 2022's
    authenticity at ``ratio = 1``), over the samples with a finite output: 0-dim float64.

    Example::

        >>> train = torch.tensor([[0.0], [1.0], [3.0]])
        >>> copy_fraction(train, torch.tensor([[0.1], [2.0], [2.9], [9.0]])).item()
        0.5
    """
    flags = copied(train, generated, ratio=ratio)
    finite = torch.isfinite(flatten64(generated)).all(dim=1)
    if not finite.any():
        return flags.new_tensor(math.nan, dtype=torch.float64)
    return flags[finite].to(torch.float64).mean()
