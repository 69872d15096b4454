"""The near-copy test d1 / d2 < 1/3 against a brute-force numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_memwatch.functional import near_copies, near_copy_share, two_nearest_distances


def numpy_two_nearest(x, reference):
    d = np.sqrt(((x[:, None, :] - reference[None, :, :]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")
    rows = np.arange(len(x))
    return d[rows, order[:, 0]], d[rows, order[:, 1]], order[:, 0]


def test_two_nearest_distances_and_share_equal_numpy(rng):
    reference = rng.standard_normal((40, 6))
    copies = reference[rng.integers(0, 40, 30)] + 0.05 * rng.standard_normal((30, 6))
    fresh = rng.standard_normal((50, 6))
    x = np.concatenate([copies, fresh])
    d1, d2, index = two_nearest_distances(torch.from_numpy(x), torch.from_numpy(reference))
    e1, e2, e_index = numpy_two_nearest(x, reference)
    np.testing.assert_allclose(d1.numpy(), e1, rtol=1e-12)
    np.testing.assert_allclose(d2.numpy(), e2, rtol=1e-12)
    assert np.array_equal(index.numpy(), e_index)
    flags = near_copies(torch.from_numpy(x), torch.from_numpy(reference))
    assert np.array_equal(flags.numpy(), e1 / e2 < 1 / 3)
    share = near_copy_share(torch.from_numpy(x), torch.from_numpy(reference)).item()
    assert share == pytest.approx(float((e1 / e2 < 1 / 3).mean()))
    assert flags[:30].all()  # the noisy copies are near-copies; fresh draws in 6-D are not
    assert not flags[30:].any()


def test_images_are_flattened_and_chunks_agree(rng, monkeypatch):
    import lightning_memwatch.functional.copies as copies

    reference = torch.from_numpy(rng.random((20, 1, 4, 4)))
    x = torch.from_numpy(rng.random((9, 1, 4, 4)))
    whole = two_nearest_distances(x, reference)
    monkeypatch.setattr(copies, "CHUNK_ELEMENTS", 40)  # two rows at a time
    chunked = two_nearest_distances(x, reference)
    for a, b in zip(whole, chunked, strict=True):
        assert torch.equal(a, b)


def test_exact_copies_count_and_nan_samples_do_not():
    reference = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    x = torch.tensor([[0.0, 0.0], [float("nan"), 0.0], [0.5, 0.0]])
    d1, d2, index = two_nearest_distances(x, reference)
    assert d1[0] == 0 and d2[0] == 1 and torch.isnan(d1[1]) and index[1] == -1
    assert near_copies(x, reference).tolist() == [True, False, False]
    assert near_copy_share(x, reference).item() == 0.5  # of the two finite samples


def test_bad_inputs_fail():
    with pytest.raises(ValueError, match="at least 2 reference samples"):
        two_nearest_distances(torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="values per sample"):
        two_nearest_distances(torch.zeros(1, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="ratio"):
        near_copies(torch.zeros(1, 2), torch.zeros(3, 2), ratio=0)
