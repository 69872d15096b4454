"""Decoder outputs as images, strips and target | recovered grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_memwatch.viz import as_images, image_strip, pairs_grid
from lightning_memwatch.viz.images import upscale


def numpy_nearest(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of ``(N, C, H, W)`` images to ``size`` by index arithmetic:
    output pixel ``(i, j)`` reads input pixel ``(floor(i H / H'), floor(j W / W'))``."""
    h, w = images.shape[-2:]
    rows = np.arange(size[0]) * h // size[0]
    cols = np.arange(size[1]) * w // size[1]
    return images[..., rows[:, None], cols[None, :]]


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
    strip = image_strip(images, pad=pad, pad_value=1.0, min_side=1)
    assert strip.shape == (3, 6, t * (5 + pad) - pad)
    for index in range(t):
        left = index * (5 + pad)
        torch.testing.assert_close(strip[:, :, left : left + 5], images[index])
        assert (strip[:, :, left + 5 : left + 5 + pad] == 1.0).all()


def test_pairs_grid_pairs_each_target_with_its_recovery() -> None:
    targets, recovered = torch.rand(6, 1, 8, 8) * 0.5, torch.rand(6, 1, 8, 8) * 0.5
    grid = pairs_grid(targets, recovered, pairs_per_row=4, pad=1, min_side=1)
    assert grid.shape == (1, 2 * 9 - 1, 4 * (17 + 3) - 3)
    for index in range(6):
        top, left = (index // 4) * 9, (index % 4) * 20
        torch.testing.assert_close(grid[:, top : top + 8, left : left + 8], targets[index])
        torch.testing.assert_close(grid[:, top : top + 8, left + 9 : left + 17], recovered[index])
    assert (grid[:, 9:, 40:] == 1.0).all()  # the two empty cells of the last row
    small = pairs_grid(targets[:2], recovered[:2], pairs_per_row=4, pad=1, min_side=1)
    assert small.shape == (1, 8, 2 * 20 - 3)
    with pytest.raises(ValueError, match="Expected `recovered` of the targets' shape"):
        pairs_grid(targets, recovered[:5])


@pytest.mark.parametrize(
    ("shape", "min_side", "factor"),
    [((2, 1, 8, 8), 64, 8), ((3, 3, 5, 7), 64, 13), ((1, 1, 28, 28), 64, 3), ((2, 1, 8, 8), 8, 1)],
)
def test_upscale_is_a_nearest_neighbour_enlargement_by_an_integer_factor(
    shape: tuple[int, ...], min_side: int, factor: int
) -> None:
    images = torch.rand(shape)
    big = upscale(images, min_side)
    h, w = shape[-2:]
    assert big.shape == (*shape[:2], factor * h, factor * w)
    assert min(big.shape[-2:]) >= min_side
    expected = numpy_nearest(images.numpy(), (factor * h, factor * w))
    np.testing.assert_array_equal(big.numpy(), expected)


def test_large_images_are_not_shrunk_and_bad_sizes_are_errors() -> None:
    images = torch.rand(2, 3, 96, 80)
    assert upscale(images) is images
    with pytest.raises(ValueError, match="Expected min_side >= 1"):
        upscale(images, 0)
    with pytest.raises(ValueError, match=r"Expected `images` of shape \(T, C, H, W\)"):
        upscale(torch.rand(8, 8))


def test_strip_and_grid_of_digits_hold_the_numpy_upscaled_digits() -> None:
    """The 8 x 8 digits of the demo become 64 x 64 blocks of the same pixels (pad 2)."""
    digits = torch.rand(5, 1, 8, 8)
    expected = numpy_nearest(digits.numpy(), (64, 64))
    strip = image_strip(digits)
    assert strip.shape == (1, 64, 5 * 66 - 2)
    for index in range(5):
        block = strip[:, :, index * 66 : index * 66 + 64].numpy()
        np.testing.assert_array_equal(block, expected[index])
    grid = pairs_grid(digits[:2], digits[2:4], pairs_per_row=2)
    assert grid.shape == (1, 64, 2 * (128 + 8) - 6)
    np.testing.assert_array_equal(grid[:, :, :64].numpy(), expected[0])
    np.testing.assert_array_equal(grid[:, :, 66:130].numpy(), expected[2])
    np.testing.assert_array_equal(grid[:, :, 136:200].numpy(), expected[1])


def test_a_long_strip_wraps_into_balanced_rows_in_reading_order() -> None:
    """17 path points: 3 rows of 6, 6 and 5 (not 8, 8 and 1), the empty cell left white."""
    images = torch.rand(17, 1, 8, 8) * 0.5
    expected = numpy_nearest(images.numpy(), (64, 64))
    strip = image_strip(images)
    assert strip.shape == (1, 3 * 66 - 2, 6 * 66 - 2)
    for index in range(17):
        top, left = (index // 6) * 66, (index % 6) * 66
        np.testing.assert_array_equal(
            strip[:, top : top + 64, left : left + 64].numpy(), expected[index]
        )
    assert (strip[:, 132:, 5 * 66 :] == 1.0).all()
    assert image_strip(images[:8]).shape == (1, 64, 8 * 66 - 2)  # up to 8: one row
    with pytest.raises(ValueError, match="max_columns >= 1"):
        image_strip(images, max_columns=0)
