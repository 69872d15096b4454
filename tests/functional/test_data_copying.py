"""Meehan et al.'s data-copying statistic C_T, its k-means cells, nearest neighbours, PCA and the
copy fraction, against float64 numpy / scipy / scikit-learn references written here, and the
paper's sanity cases on a Gaussian mixture generated here (copies, fresh draws, a wider
generator)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.cluster import KMeans

from lightning_memwatch.functional import (
    assign_cells,
    copied,
    copy_fraction,
    data_copying_cells,
    data_copying_from_distances,
    data_copying_statistic,
    kmeans,
    mann_whitney_z,
    nearest_neighbours,
    pca_projection,
    project,
)
from lightning_memwatch.functional import neighbours as neighbours_module
from lightning_memwatch.functional.data_copying import MIN_GENERATED

DIM, COMPONENTS = 10, 5
#: Fixed centres of the Gaussian mixture every sanity case draws from (unit spread).
CENTRES = np.random.default_rng(99).normal(scale=5.0, size=(COMPONENTS, DIM))


def mixture(n: int, rng: np.random.Generator, spread: float = 1.0) -> torch.Tensor:
    """``n`` draws of the mixture: a uniformly chosen centre plus ``spread * N(0, I)``."""
    labels = rng.integers(COMPONENTS, size=n)
    return torch.from_numpy(CENTRES[labels] + spread * rng.standard_normal((n, DIM)))


# ------------------------------------------------------------------ references in numpy
def reference_z(a: np.ndarray, b: np.ndarray) -> float:
    """Z_U of a against b from scipy's asymptotic one-sided p-value: Phi^-1(p_less)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    p = stats.mannwhitneyu(a, b, alternative="less", method="asymptotic").pvalue
    return float(stats.norm.ppf(p))


def reference_nearest(x: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None):
    d = np.sqrt(((x[:, None, :] - ref[None, :, :]) ** 2).sum(-1))
    if mask is not None:
        d = np.where(mask, d, np.inf)
    return d.min(1), d.argmin(1)


def reference_ct(p_d, p_c, q_d, q_c, k, tau=None) -> float:
    """Meehan et al.'s C_T in numpy + scipy: P_n-weighted mean of the per-cell Z_U over the
    cells with at least tau * m generated samples (20 when tau is None)."""
    m, total, weight = len(q_d), 0.0, 0.0
    for cell in range(k):
        p, q = p_d[p_c == cell], q_d[q_c == cell]
        enough = len(q) >= (MIN_GENERATED if tau is None else tau * m) and len(q) > 0
        if enough and len(p) > 0:
            total += len(p) * reference_z(q, p)
            weight += len(p)
    return total / weight


# ------------------------------------------------------------------------ Mann-Whitney
@pytest.mark.parametrize("sizes", [(30, 25), (5, 40), (60, 3)])
def test_mann_whitney_z_equals_scipy_with_ties(sizes, rng):
    a = rng.normal(size=sizes[0]).round(1)  # rounding makes ties
    b = rng.normal(0.4, size=sizes[1]).round(1)
    got = mann_whitney_z(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert got == pytest.approx(reference_z(a, b), rel=1e-9, abs=1e-12)
    swapped = mann_whitney_z(torch.from_numpy(b), torch.from_numpy(a)).item()
    assert swapped == pytest.approx(reference_z(b, a), rel=1e-9, abs=1e-12)


def test_mann_whitney_z_drops_nan_and_is_zero_without_evidence():
    a, b = torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([3.0, 4.0])
    assert mann_whitney_z(a, b).item() == pytest.approx(reference_z(np.r_[1.0, 2.0], np.r_[3, 4]))
    assert mann_whitney_z(torch.tensor([]), b).item() == 0.0
    assert mann_whitney_z(torch.ones(3), torch.ones(4)).item() == 0.0


# ----------------------------------------------------------------------------- k-means
def test_kmeans_equals_scikit_learn_lloyd_from_the_same_start(rng):
    x = mixture(300, rng)
    start, _ = kmeans(x, 6, iterations=0, generator=torch.Generator().manual_seed(3))
    centroids, cells = kmeans(x, 6, iterations=300, generator=torch.Generator().manual_seed(3))
    sk = KMeans(6, init=start.numpy(), n_init=1, max_iter=300, tol=0, algorithm="lloyd").fit(x)
    np.testing.assert_allclose(centroids.numpy(), sk.cluster_centers_, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(cells.numpy(), sk.labels_)
    # the cells are the Voronoi regions of the centroids
    d = ((x.numpy()[:, None] - centroids.numpy()[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(assign_cells(x, centroids).numpy(), d.argmin(1))


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_kmeans_finds_well_separated_blobs_and_is_seeded(init, rng):
    blobs = torch.from_numpy(np.repeat(100.0 * np.eye(4), 25, axis=0) + rng.normal(size=(100, 4)))
    centroids, cells = kmeans(blobs, 4, init=init, generator=torch.Generator().manual_seed(0))
    truth = np.repeat(np.arange(4), 25)
    # one cell per blob (up to the cells' order), each centroid the mean of its blob
    mapping = {int(cells[i * 25]) for i in range(4)}
    assert len(mapping) == 4
    for blob in range(4):
        members = cells.numpy()[truth == blob]
        assert (members == members[0]).all()
        expected = blobs.numpy()[truth == blob].mean(0)
        np.testing.assert_allclose(centroids[members[0]].numpy(), expected, rtol=1e-12)
    again = kmeans(blobs, 4, init=init, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], centroids) and torch.equal(again[1], cells)
    starts = kmeans(blobs, 4, init=init, iterations=0)[0]
    assert all((blobs == row).all(1).any() for row in starts)  # starts are data points


def test_kmeans_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least k=3 samples"):
        kmeans(torch.zeros(2, 1), 3)
    with pytest.raises(ValueError, match="`init`"):
        kmeans(torch.zeros(4, 1), 2, init="forgy")


# ---------------------------------------------------------------- neighbours and PCA
def test_nearest_neighbours_equal_numpy_in_cells_and_without_self(rng, monkeypatch):
    monkeypatch.setattr(neighbours_module, "CHUNK_ELEMENTS", 7 * 40)  # several chunks of rows
    x, ref = rng.normal(size=(50, 3)), rng.normal(size=(40, 3))
    x_cells, ref_cells = rng.integers(3, size=50), rng.integers(3, size=40)
    got_d, got_i = nearest_neighbours(torch.from_numpy(x), torch.from_numpy(ref))
    want_d, want_i = reference_nearest(x, ref)
    np.testing.assert_allclose(got_d.numpy(), want_d, rtol=1e-13)
    np.testing.assert_array_equal(got_i.numpy(), want_i)
    got_d, got_i = nearest_neighbours(
        torch.from_numpy(x),
        torch.from_numpy(ref),
        x_cells=torch.from_numpy(x_cells),
        reference_cells=torch.from_numpy(ref_cells),
    )
    want_d, want_i = reference_nearest(x, ref, x_cells[:, None] == ref_cells[None, :])
    np.testing.assert_allclose(got_d.numpy(), want_d, rtol=1e-13)
    np.testing.assert_array_equal(got_i.numpy(), want_i)
    got_d, got_i = nearest_neighbours(
        torch.from_numpy(ref), torch.from_numpy(ref), exclude_self=True
    )
    want_d, want_i = reference_nearest(ref, ref, ~np.eye(40, dtype=bool))
    np.testing.assert_allclose(got_d.numpy(), want_d, rtol=1e-13)
    np.testing.assert_array_equal(got_i.numpy(), want_i)
    # an exact copy is at distance 0 exactly (the returned distance is not the search's)
    copies = torch.from_numpy(ref[::3] + 10.0)
    got_d, got_i = nearest_neighbours(copies, copies + 0.0)
    assert (got_d == 0).all() and torch.equal(got_i, torch.arange(len(copies)))


def test_nearest_neighbours_of_an_empty_cell_and_of_nan():
    ref = torch.tensor([[0.0], [1.0]])
    d, i = nearest_neighbours(
        torch.tensor([[0.2], [float("nan")]]),
        ref,
        x_cells=torch.tensor([2, 0]),
        reference_cells=torch.tensor([0, 0]),
    )
    assert d[0] == float("inf") and i[0] == -1
    assert d[1].isnan() and i[1] == -1


def test_pca_projection_spans_the_top_principal_subspace(rng):
    x = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 2.0, 0.5, 0.2, 0.1])
    mean, components = pca_projection(torch.from_numpy(x), 3)
    centred = x - x.mean(0)
    _, eigenvectors = np.linalg.eigh(centred.T @ centred)
    top = eigenvectors[:, ::-1][:, :3]
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(components.numpy().T @ components.numpy(), top @ top.T, atol=1e-10)
    # each projected coordinate is the eigen-coordinate up to its sign
    coordinates = project(torch.from_numpy(x), (mean, components)).numpy()
    np.testing.assert_allclose(np.abs(coordinates), np.abs(centred @ top), atol=1e-9)
    with pytest.raises(ValueError, match="at most"):
        pca_projection(torch.from_numpy(x), 7)


# --------------------------------------------------------------------------- the statistic
@pytest.mark.parametrize("within_cell", [True, False])
@pytest.mark.parametrize("tau", [None, 0.3])
def test_statistic_equals_numpy_and_scipy_on_the_same_cells(within_cell, tau, rng):
    train, heldout = mixture(400, rng), mixture(150, rng)
    noise = torch.from_numpy(rng.standard_normal((60, DIM)))
    generated = torch.cat([train[:60] + 0.1 * noise, mixture(140, rng)])
    got = data_copying_statistic(
        train, heldout, generated, cells=4, tau=tau, within_cell=within_cell
    ).item()
    centroids, train_cells = kmeans(train, 4)
    t, t_c = train.numpy(), train_cells.numpy()
    found = {}
    for name, x in (("p", heldout), ("q", generated)):
        cells = assign_cells(x, centroids).numpy()
        mask = cells[:, None] == t_c[None, :] if within_cell else None
        found[name] = (reference_nearest(x.numpy(), t, mask)[0], cells)
    want = reference_ct(*found["p"], *found["q"], 4, tau)
    assert got == pytest.approx(want, rel=1e-9)
    if tau is not None:  # the rule leaves at least one cell out here
        assert np.bincount(found["q"][1], minlength=4).min() < tau * len(generated)


def test_from_distances_applies_the_generated_count_rule():
    # cell 0: 20 generated, below the held-out; cell 1: 19 generated, far above: left out
    p_d = torch.cat([torch.linspace(1, 2, 10), torch.linspace(1, 2, 30)])
    p_c = torch.cat([torch.zeros(10), torch.ones(30)]).long()
    q_d = torch.cat([torch.linspace(0, 0.5, 20), torch.linspace(5, 6, 19)])
    q_c = torch.cat([torch.zeros(20), torch.ones(19)]).long()
    z, n, m = data_copying_cells(p_d, p_c, q_d, q_c, cells=3)
    assert n.tolist() == [10, 30, 0] and m.tolist() == [20, 19, 0] and z[2] == 0
    got = data_copying_from_distances(p_d, p_c, q_d, q_c, cells=3).item()
    assert got == pytest.approx(reference_z(q_d[:20].numpy(), p_d[:10].numpy()), rel=1e-12)
    both = data_copying_from_distances(p_d, p_c, q_d, q_c, cells=3, tau=0.0).item()
    want = (10 * z[0] + 30 * z[1]) / 40
    assert both == pytest.approx(want.item(), rel=1e-12)
    nothing = data_copying_from_distances(p_d, p_c, q_d, q_c, cells=3, tau=0.9)
    assert nothing.isnan()


def test_paper_sanity_cases_copies_fresh_draws_and_a_wider_generator():
    """Meehan et al.'s sanity checks, on a 5-component mixture in 10 dimensions: the null
    spread of C_T is measured over seeds (train, held-out and generated all fresh draws of the
    mixture); copies of training samples plus small noise fall far below it, a generator twice
    as wide as the data far above it."""
    cells, seeds = 5, 30
    null = []
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        train, heldout, generated = mixture(600, rng), mixture(200, rng), mixture(400, rng)
        null.append(data_copying_statistic(train, heldout, generated, cells=cells).item())
    mean, spread = np.mean(null), np.std(null, ddof=1)
    # Observed: mean -0.02, spread 0.43 (~1 / sqrt(5): each cell's Z_U is about N(0, 1)),
    # range -0.96 to 0.92
    assert abs(mean) < 3 * spread / np.sqrt(seeds)
    assert 0.5 / np.sqrt(cells) < spread < 1.5 / np.sqrt(cells)

    rng = np.random.default_rng(7)
    train, heldout = mixture(600, rng), mixture(200, rng)
    picks = torch.from_numpy(rng.integers(600, size=400))
    copies = train[picks] + 0.05 * torch.from_numpy(rng.standard_normal((400, DIM)))
    wider = mixture(400, rng, spread=2.0)
    ct_copies = data_copying_statistic(train, heldout, copies, cells=cells).item()
    ct_wider = data_copying_statistic(train, heldout, wider, cells=cells).item()
    # Observed: copies -8.9, wider +8.5
    assert ct_copies < min(null) - 10 * spread
    assert ct_wider > max(null) + 10 * spread


# ------------------------------------------------------------------------ copy fraction
def test_copy_fraction_equals_numpy(rng):
    train, generated = mixture(300, rng), mixture(200, rng)
    generated[:50] = train[:50] + 0.01
    generated[-1] = float("nan")
    t, g = train.numpy(), generated.numpy()
    own = reference_nearest(t, t, ~np.eye(300, dtype=bool))[0]
    for ratio in (1.0, 0.5):
        d, nearest = reference_nearest(g[:-1], t)
        want = d < ratio * own[nearest]
        flags = copied(train, generated, ratio=ratio)
        np.testing.assert_array_equal(flags[:-1].numpy(), want)
        assert not flags[-1]
        own_t = torch.from_numpy(own)
        assert torch.equal(copied(train, generated, ratio=ratio, train_distances=own_t), flags)
        fraction = copy_fraction(train, generated, ratio=ratio).item()
        assert fraction == pytest.approx(want.mean(), rel=1e-12)  # the NaN sample left out
    assert copy_fraction(train, train[:100] + 1e-3).item() == 1.0


def test_copy_fraction_orders_the_sanity_cases(rng):
    """Fresh draws sit inside a training sample's nearest-neighbour ball at some base rate;
    copies nearly always, a wider generator rarely."""
    train = mixture(600, rng)
    fresh = copy_fraction(train, mixture(400, rng)).item()
    noise = torch.from_numpy(rng.standard_normal((400, DIM)))
    copies = copy_fraction(train, train[:400] + 0.05 * noise).item()
    wider = copy_fraction(train, mixture(400, rng, spread=2.0)).item()
    # Observed: fresh 0.36, copies 1.0, wider 0.03
    assert copies > 0.95 and wider < 0.1 and wider < fresh < copies
