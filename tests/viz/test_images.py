"""Decoder outputs as images, strips and target | recovered grids."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_memwatch.viz import as_images, image_strip, pairs_grid


@pytest.mark.parametrize(
    ("shape", "image_shape", "expected"),
    [
        ((4, 1, 8, 8), None, (4, 1, 8, 8)),
        ((4, 3, 5, 6), None, (4, 3, 5, 6)),
        ((4, 8, 8), None, (4, 1, 8, 8)),
        ((4, 64), (8, 8), (4, 1, 8, 8)),
        ((4, 48), (3, 4, 4), (4, 3, 4, 4)),
        ((4, 1, 64), (8, 8), (4, 1, 8, 8)),
    ],
)
def test_image_like_outputs_become_a_batch_in_unit_range(
    shape: tuple[int, ...], image_shape: tuple[int, ...] | None, expected: tuple[int, ...]
) -> None:
    outputs = torch.randn(shape, dtype=torch.float64) * 5 + 2
    images = as_images(outputs, image_shape)
    assert images.shape == expected
    assert images.dtype == torch.float32
    assert images.min() == 0.0 and images.max() == 1.0  # min-max over the whole batch
    scaled = (outputs - outputs.min()) / (outputs.max() - outputs.min())
    torch.testing.assert_close(images.flatten(), scaled.flatten().float())


@pytest.mark.parametrize(
    "shape", [(4, 7), (4, 64), (4, 2, 8, 8), (4,), (0, 1, 8, 8), (2, 3, 4, 4, 4)]
)
def test_outputs_that_are_not_images_give_none(shape: tuple[int, ...]) -> None:
    assert as_images(torch.randn(shape)) is None


def test_unit_range_is_kept_and_non_finite_pixels_are_zero() -> None:
    outputs = torch.rand(3, 1, 4, 4) * 0.5 + 0.25
    torch.testing.assert_close(as_images(outputs), outputs)
    outputs[0, 0, 0, 0], outputs[1, 0, 0, 0] = math.nan, -math.inf
    outputs[2] = outputs[2] * 4 - 1  # leaves [0, 1]: scaled over the finite values only
    images = as_images(outputs)
    assert images[0, 0, 0, 0] == 0.0 and images[1, 0, 0, 0] == 0.0
    assert torch.isfinite(images).all() and images.min() == 0.0 and images.max() == 1.0
    assert (as_images(torch.full((2, 4, 4), 7.0)) == 0.0).all()


def test_image_shape_that_does_not_fit_is_an_error() -> None:
    with pytest.raises(ValueError, match="Expected outputs of 64 values per sample"):
        as_images(torch.zeros(4, 63), image_shape=(8, 8))
    with pytest.raises(ValueError, match=r"Expected image_shape \(H, W\) or \(C, H, W\)"):
        as_images(torch.zeros(4, 64), image_shape=(64,))


@pytest.mark.parametrize(("t", "pad"), [(1, 1), (5, 1), (5, 0), (3, 2)])
def test_image_strip_puts_images_side_by_side(t: int, pad: int) -> None:
    images = torch.rand(t, 3, 6, 5) * 0.5
    strip = image_strip(images, pad=pad, pad_value=1.0)
    assert strip.shape == (3, 6, t * (5 + pad) - pad)
    for index in range(t):
        left = index * (5 + pad)
        torch.testing.assert_close(strip[:, :, left : left + 5], images[index])
        assert (strip[:, :, left + 5 : left + 5 + pad] == 1.0).all()


def test_pairs_grid_pairs_each_target_with_its_recovery() -> None:
    targets, recovered = torch.rand(6, 1, 8, 8) * 0.5, torch.rand(6, 1, 8, 8) * 0.5
    grid = pairs_grid(targets, recovered, pairs_per_row=4, pad=1)
    assert grid.shape == (1, 2 * 9 - 1, 4 * (17 + 3) - 3)
    for index in range(6):
        top, left = (index // 4) * 9, (index % 4) * 20
        torch.testing.assert_close(grid[:, top : top + 8, left : left + 8], targets[index])
        torch.testing.assert_close(grid[:, top : top + 8, left + 9 : left + 17], recovered[index])
    assert (grid[:, 9:, 40:] == 1.0).all()  # the two empty cells of the last row
    assert pairs_grid(targets[:2], recovered[:2], pairs_per_row=4).shape == (1, 8, 2 * 20 - 3)
    with pytest.raises(ValueError, match="Expected `recovered` of the targets' shape"):
        pairs_grid(targets, recovered[:5])
