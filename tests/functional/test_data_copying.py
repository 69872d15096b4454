"""Meehan et al.'s data-copying statistic C_T, its k-means cells, nearest neighbours, PCA and the
copy fraction, against float64 numpy / scipy / scikit-learn references written here (C_T: the
paper's formulas written out in ``tests/conftest.py``, and scipy's tie-corrected z for the
variant), the paper's sanity cases on a Gaussian mixture generated here (copies, fresh draws, a
wider generator), and the authors' moons setting with exact copies (ties) and a cell of exactly
``tau m`` generated samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_moons

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
from tests.conftest import meehan_ct, meehan_z

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


# ------------------------------------------------------------------------ Mann-Whitney
@pytest.mark.parametrize("sizes", [(30, 25), (5, 40), (60, 3)])
def test_mann_whitney_z_equals_the_paper_and_its_tie_corrected_variant_scipy(sizes, rng):
    a = rng.normal(size=sizes[0]).round(1)  # rounding makes ties
    b = rng.normal(0.4, size=sizes[1]).round(1)
    for x, y in ((a, b), (b, a)):
        got = mann_whitney_z(torch.from_numpy(x), torch.from_numpy(y)).item()
        assert got == pytest.approx(meehan_z(x, y), rel=1e-12, abs=1e-12)
        tied = mann_whitney_z(torch.from_numpy(x), torch.from_numpy(y), tie_correction=True)
        assert tied.item() == pytest.approx(reference_z(x, y), rel=1e-9, abs=1e-12)
        # ties shrink the variance: the tie-corrected z is larger in size, same sign
        assert abs(tied.item()) > abs(got) and np.sign(tied.item()) == np.sign(got)
    continuous_a, continuous_b = rng.normal(size=20), rng.normal(size=30)
    plain = mann_whitney_z(torch.from_numpy(continuous_a), torch.from_numpy(continuous_b))
    corrected = mann_whitney_z(
        torch.from_numpy(continuous_a), torch.from_numpy(continuous_b), tie_correction=True
    )
    assert plain.item() == pytest.approx(corrected.item(), rel=1e-12)  # no ties: one number


def test_mann_whitney_z_drops_nan_and_is_zero_without_evidence():
    a, b = torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([3.0, 4.0])
    assert mann_whitney_z(a, b).item() == pytest.approx(meehan_z(np.r_[1.0, 2.0], np.r_[3, 4]))
    assert mann_whitney_z(torch.tensor([]), b).item() == 0.0
    # all tied: U = mn / 2, so only the continuity correction is left; zero variance when
    # the ties are corrected for
    assert mann_whitney_z(torch.ones(3), torch.ones(4)).item() == pytest.approx(
        meehan_z(np.ones(3), np.ones(4)), rel=1e-12
    )
    assert mann_whitney_z(torch.ones(3), torch.ones(4), tie_correction=True).item() == 0.0


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
@pytest.mark.parametrize("tie_correction", [False, True])
@pytest.mark.parametrize("within_cell", [True, False])
@pytest.mark.parametrize("tau", [None, 0.3])
def test_statistic_equals_numpy_and_scipy_on_the_same_cells(within_cell, tau, tie_correction, rng):
    train, heldout = mixture(400, rng), mixture(150, rng)
    noise = torch.from_numpy(rng.standard_normal((60, DIM)))
    # noisy copies, exact copies (distance 0: ties) and fresh draws
    generated = torch.cat([train[:60] + 0.1 * noise, train[100:130], mixture(110, rng)])
    got = data_copying_statistic(
        train,
        heldout,
        generated,
        cells=4,
        tau=tau,
        within_cell=within_cell,
        tie_correction=tie_correction,
    ).item()
    centroids, train_cells = kmeans(train, 4)
    t, t_c = train.numpy(), train_cells.numpy()
    found = {}
    for name, x in (("p", heldout), ("q", generated)):
        cells = assign_cells(x, centroids).numpy()
        mask = cells[:, None] == t_c[None, :] if within_cell else None
        found[name] = (reference_nearest(x.numpy(), t, mask)[0], cells)
    want = meehan_ct(*found["p"], *found["q"], 4, tau, tie_correction)
    assert got == pytest.approx(want, rel=1e-9)
    if tau is not None:  # the rule leaves at least one cell out here
        assert np.bincount(found["q"][1], minlength=4).min() < tau * len(generated)


def test_from_distances_applies_the_generated_count_rule():
    # cell 0: 21 generated, below the held-out; cell 1: 20 generated, far above: left out (a
    # cell needs more than 20); cell 2: none
    p_d = torch.cat([torch.linspace(1, 2, 10), torch.linspace(1, 2, 30)])
    p_c = torch.cat([torch.zeros(10), torch.ones(30)]).long()
    q_d = torch.cat([torch.linspace(0, 0.5, 21), torch.linspace(5, 6, 20)])
    q_c = torch.cat([torch.zeros(21), torch.ones(20)]).long()
    z, n, m = data_copying_cells(p_d, p_c, q_d, q_c, cells=3)
    assert n.tolist() == [10, 30, 0] and m.tolist() == [21, 20, 0] and z[2] == 0
    got = data_copying_from_distances(p_d, p_c, q_d, q_c, cells=3).item()
    assert got == pytest.approx(meehan_z(q_d[:21].numpy(), p_d[:10].numpy()), rel=1e-12)
    both = data_copying_from_distances(p_d, p_c, q_d, q_c, cells=3, tau=0.0).item()
    want = (10 * z[0] + 30 * z[1]) / 40
    assert both == pytest.approx(want.item(), rel=1e-12)
    # tau as a share: cell 1 holds 20 / 41 of the generated samples, kept only below that
    share = 20 / 41
    kept = data_copying_from_distances(p_d, p_c, q_d, q_c, cells=3, tau=share - 1e-9).item()
    assert kept == pytest.approx(both, rel=1e-12)
    left = data_copying_from_distances(p_d, p_c, q_d, q_c, cells=3, tau=share).item()
    assert left == pytest.approx(got, rel=1e-12)
    nothing = data_copying_from_distances(p_d, p_c, q_d, q_c, cells=3, tau=0.9)
    assert nothing.isnan()


def test_a_cell_of_exactly_tau_generated_samples_is_left_out():
    """Constructed so that the cell rule decides the sign: cell 0 copies (21 generated samples
    at distance 0 against 10 held-out), cell 1 (exactly 20 generated samples, 30 held-out)
    underfits. The authors' ``Q_m(pi) > tau`` keeps cell 0 only; keeping cells of at least
    ``tau m`` samples (``>=``) would weigh cell 1 in and flip the sign."""
    p_d = torch.cat([torch.linspace(1, 2, 10), torch.linspace(1, 2, 30)]).double()
    p_c = torch.cat([torch.zeros(10), torch.ones(30)]).long()
    q_d = torch.cat([torch.zeros(21), torch.linspace(1.5, 3, 20)]).double()
    q_c = torch.cat([torch.zeros(21), torch.ones(20)]).long()
    got = data_copying_from_distances(p_d, p_c, q_d, q_c, cells=2).item()
    want = meehan_ct(p_d.numpy(), p_c.numpy(), q_d.numpy(), q_c.numpy(), 2)
    assert got == pytest.approx(want, rel=1e-12)
    z0, z1 = (meehan_z(q_d[q_c == c].numpy(), p_d[p_c == c].numpy()) for c in range(2))
    assert got == pytest.approx(z0, rel=1e-12)  # cell 1 left out
    with_tau_cell = (10 * z0 + 30 * z1) / 40  # what the ">=" rule gave
    # Observed: -4.42 (authors' rule) against +2.51 (">="; +2.29 tie-corrected, as before)
    assert got < -4 and with_tau_cell > 0
    tied = data_copying_from_distances(p_d, p_c, q_d, q_c, cells=2, tie_correction=True).item()
    assert tied == pytest.approx(
        meehan_ct(p_d.numpy(), p_c.numpy(), q_d.numpy(), q_c.numpy(), 2, tie_correction=True),
        rel=1e-12,
    )
    assert tied < got  # 21 tied zeros: a smaller variance, a more negative z


def _moons(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(make_moons(n_samples=n, noise=0.2, random_state=seed)[0])


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = load_digits().data.astype(np.float64)
    order = np.random.default_rng(0).permutation(len(x))
    return tuple(
        torch.from_numpy(x[order[a:b]]) for a, b in ((0, 1000), (1000, 1500), (1500, None))
    )


def _fresh_and_copies(name: str) -> tuple[torch.Tensor, torch.Tensor, dict, int]:
    """(train, held-out, {case: generated}, cells): the authors' moons setting (2,000 training,
    1,000 held-out, 1,000 generated, 5 cells, noise 0.2) and 1,000 / 500 / 297 digits, 4 cells."""
    rng = np.random.default_rng(1)
    if name == "moons":
        train, heldout, fresh, cells = _moons(2000, 1), _moons(1000, 2), _moons(1000, 3), 5
        copies = train[torch.from_numpy(rng.choice(2000, 1000, replace=False))]
    else:
        (train, heldout, fresh), cells = _digits(), 4
        copies = train[torch.from_numpy(rng.choice(1000, len(fresh), replace=False))]
    half = len(fresh) // 2
    cases = {"fresh": fresh, "copies": copies, "half": torch.cat([copies[:half], fresh[half:]])}
    return train, heldout, cases, cells


@pytest.mark.parametrize("name", ["moons", "digits"])
def test_authors_setting_with_exact_copies_equals_the_paper_and_the_tie_corrected_scipy(name):
    """On the authors' moons setting (and on digits) C_T equals the paper's formulas written out
    (``tests/conftest.py``), on fresh draws, on exact copies of training samples (distance 0:
    ties) and on half of each; the tie-corrected variant equals scipy's z, and is more negative
    where the copies tie, the same where nothing ties (moons)."""
    train, heldout, cases, cells = _fresh_and_copies(name)
    centroids, train_cells = kmeans(train, cells, generator=torch.Generator().manual_seed(0))
    t, t_c = train.numpy(), train_cells.numpy()
    got = {}
    for case, generated in cases.items():
        found = {}
        for key, x in (("p", heldout), ("q", generated)):
            x_cells = assign_cells(x, centroids).numpy()
            found[key] = (reference_nearest(x.numpy(), t, x_cells[:, None] == t_c)[0], x_cells)
        for tie_correction in (False, True):
            value = data_copying_statistic(
                train,
                heldout,
                generated,
                cells=cells,
                generator=torch.Generator().manual_seed(0),
                tie_correction=tie_correction,
            ).item()
            want = meehan_ct(*found["p"], *found["q"], cells, None, tie_correction)
            assert value == pytest.approx(want, rel=1e-12, abs=1e-12), (case, tie_correction)
            got[case, tie_correction] = value
    # Observed, default / tie-corrected: moons fresh -0.317 / -0.317, copies -17.48 / -18.68,
    # half -9.095 / -9.166; digits fresh -0.49521 / -0.49522, copies -12.14 / -12.47,
    # half -6.550 / -6.572
    if name == "moons":  # continuous: no ties among the fresh draws
        assert got["fresh", True] == pytest.approx(got["fresh", False], rel=1e-12)
    assert got["copies", True] < got["copies", False] - 0.2
    assert got["half", True] < got["half", False]
    assert got["copies", False] < -8 and abs(got["fresh", False]) < 2


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
