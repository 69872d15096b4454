"""Decoder outputs as TensorBoard images: interpolation strips and target | recovered grids.

Everything here is torch only (no matplotlib). The results are ``(C, H, W)`` tensors in
``[0, 1]`` for ``SummaryWriter.add_image(tag, image, step)`` (its default ``"CHW"`` format).
Small images are enlarged by an integer factor with nearest-neighbour sampling
(:func:`upscale`) before they are laid out, so an 8 x 8 digit shows as 64 x 64 sharp pixels
instead of a strip 8 pixels high.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def as_images(outputs: Tensor, image_shape: tuple[int, ...] | None = None) -> Tensor | None:
    """Outputs as a float ``(T, C, H, W)`` image batch in ``[0, 1]``, or ``None`` if not images.

    Image-like means ``(T, C, H, W)`` with ``C`` in ``{1, 3}``, ``(T, H, W)`` (one channel), or
    any ``(T, ...)`` batch of ``prod(image_shape)`` values per sample when ``image_shape``
    (``(H, W)`` or ``(C, H, W)``) is given. Values already inside ``[0, 1]`` are kept; otherwise
    the whole batch is min-max scaled together (one scale for all ``T`` images, so they
    compare), a constant batch becoming 0. Non-finite values become 0.

    Example::

        >>> as_images(torch.zeros(4, 8, 8)).shape
        torch.Size([4, 1, 8, 8])
        >>> as_images(torch.zeros(4, 7)) is None
        True
        >>> as_images(torch.tensor([[-1.0, 0.0, 0.0, 1.0]]), image_shape=(2, 2)).flatten()
        tensor([0.0000, 0.5000, 0.5000, 1.0000])
    """
    images = outputs.detach().to("cpu", torch.float32)
    if image_shape is not None:
        if len(image_shape) not in (2, 3):
            raise ValueError(f"Expected image_shape (H, W) or (C, H, W) but got {image_shape}")
        if outputs.ndim == 0 or math.prod(outputs.shape[1:]) != math.prod(image_shape):
            raise ValueError(
                f"Expected outputs of {math.prod(image_shape)} values per sample for image_shape"
                f" {tuple(image_shape)} but got shape {tuple(outputs.shape)}"
            )
        images = images.reshape(len(images), *image_shape)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.numel() == 0:
        return None
    finite = torch.isfinite(images)
    images = torch.where(finite, images, 0.0)
    values = images[finite]
    if values.numel() > 0 and (values.min() < 0 or values.max() > 1):
        low, span = values.min(), values.max() - values.min()
        images = (images - low) / span if span > 0 else torch.zeros_like(images)
        images = torch.where(finite, images, 0.0)
    return images


#: The side, in pixels, below which :func:`image_strip` and :func:`pairs_grid` enlarge an image.
MIN_SIDE = 64


def upscale(images: Tensor, min_side: int = MIN_SIDE) -> Tensor:
    """``(N, C, H, W)`` images enlarged by the smallest integer factor ``k`` that makes their
    shorter side at least ``min_side``, ``k = max(1, ceil(min_side / min(H, W)))``, by
    nearest-neighbour sampling: pixel ``(i, j)`` of the result is pixel ``(i // k, j // k)`` of
    the input, so every input pixel becomes a sharp ``k x k`` block. Images already that large
    are returned as they are (never shrunk).

    Example::

        >>> upscale(torch.tensor([[[[0.0, 1.0]]]]), min_side=2)
        tensor([[[[0., 0., 1., 1.],
                  [0., 0., 1., 1.]]]])
        >>> upscale(torch.zeros(3, 1, 8, 8)).shape
        torch.Size([3, 1, 64, 64])
    """
    _check_batch(images, "images")
    if min_side < 1:
        raise ValueError(f"Expected min_side >= 1 but got {min_side}")
    factor = max(1, math.ceil(min_side / min(images.shape[-2:])))
    if factor == 1:
        return images
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def _tile(images: Tensor, columns: int, hpad: int, vpad: int, pad_value: float) -> Tensor:
    """``(N, C, H, W)`` laid out row-major, ``columns`` per row, into one ``(C, H', W')``
    canvas; ``hpad`` / ``vpad`` pixels of ``pad_value`` between columns / rows, none outside."""
    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    canvas = images.new_full(
        (c, rows * (h + vpad) - vpad, columns * (w + hpad) - hpad), float(pad_value)
    )
    for index, image in enumerate(images):
        top, left = (index // columns) * (h + vpad), (index % columns) * (w + hpad)
        canvas[:, top : top + h, left : left + w] = image
    return canvas


def _check_batch(images: Tensor, name: str) -> None:
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"Expected `{name}` of shape (T, C, H, W), T >= 1, but got {images.shape}")


def image_strip(
    images: Tensor,
    *,
    pad: int = 2,
    pad_value: float = 1.0,
    min_side: int = MIN_SIDE,
    max_columns: int = 8,
) -> Tensor:
    """``(T, C, H, W)`` images side by side, in reading order, at most ``max_columns`` a row.

    E.g. the decoded points of an interpolation path, in order. Each image is first enlarged
    ``k`` times (:func:`upscale` to ``min_side``, nearest neighbour; ``min_side=1`` keeps
    them as they are); ``pad`` pixels of ``pad_value`` (default white) separate neighbours.
    More than ``max_columns`` images wrap onto ``rows = ceil(T / max_columns)`` rows of
    ``columns = ceil(T / rows)`` (17 images: 3 rows of 6, 6 and 5), so that a long path is not
    a sliver once TensorBoard fits it to the width of its card.

    Returns:
        ``(C, rows * (kH + pad) - pad, columns * (kW + pad) - pad)``.

    Example::

        >>> image_strip(torch.zeros(5, 1, 8, 8)).shape  # k = 8, one row
        torch.Size([1, 64, 328])
        >>> image_strip(torch.zeros(17, 1, 8, 8)).shape  # 3 rows of at most 6
        torch.Size([1, 196, 394])
        >>> image_strip(torch.zeros(5, 1, 8, 8), pad=1, min_side=1).shape
        torch.Size([1, 8, 44])
    """
    if pad < 0 or max_columns < 1:
        raise ValueError(f"Expected pad >= 0, max_columns >= 1 but got {pad}, {max_columns}")
    rows = math.ceil(len(images) / max_columns)
    columns = math.ceil(len(images) / rows) if rows else 1
    return _tile(upscale(images, min_side), columns, pad, pad, pad_value)


def pairs_grid(
    targets: Tensor,
    recovered: Tensor,
    *,
    pairs_per_row: int = 4,
    pad: int = 2,
    pad_value: float = 1.0,
    min_side: int = MIN_SIDE,
) -> Tensor:
    """Target | recovered pairs in a grid, ``pairs_per_row`` pairs per row (Webster et al. (2019),
    fig. 2).

    Webster et al. (2019): a memorized training image is recovered almost
    exactly, a validation image is not. Each image is first enlarged ``k`` times
    (:func:`upscale` to ``min_side``, nearest neighbour; ``min_side=1`` keeps them as they
    are). Within a pair ``pad`` columns separate target and recovery; pairs are ``3 * pad``
    apart, rows ``pad`` apart. Scale the two batches together
    so their brightness compares, e.g. ``pairs_grid(*as_images(torch.cat([x, x_hat])).chunk(2))``.

    Args:
        targets: ``(N, C, H, W)`` images.
        recovered: ``(N, C, H, W)`` images, ``recovered[i]`` the recovery of ``targets[i]``.

    Returns:
        ``(C, rows * (kH + pad) - pad, n * (2 kW + 4 pad) - 3 pad)`` with ``n =
        min(pairs_per_row, N)`` and ``rows = ceil(N / n)``.

    Example::

        >>> pairs_grid(torch.zeros(6, 1, 8, 8), torch.ones(6, 1, 8, 8)).shape  # k = 8
        torch.Size([1, 130, 538])
        >>> pairs_grid(torch.zeros(6, 1, 8, 8), torch.ones(6, 1, 8, 8), pad=1, min_side=1).shape
        torch.Size([1, 17, 77])
    """
    _check_batch(targets, "targets")
    if recovered.shape != targets.shape:
        raise ValueError(
            f"Expected `recovered` of the targets' shape {tuple(targets.shape)} but got"
            f" {tuple(recovered.shape)}"
        )
    if pairs_per_row < 1 or pad < 0:
        raise ValueError(f"Expected pairs_per_row >= 1, pad >= 0 but got {pairs_per_row}, {pad}")
    targets, recovered = upscale(targets, min_side), upscale(recovered, min_side)
    pairs = torch.stack(
        [
            _tile(torch.stack([t, r]), 2, pad, 0, pad_value)
            for t, r in zip(targets, recovered, strict=True)
        ]
    )
    return _tile(pairs, min(pairs_per_row, len(pairs)), 3 * pad, pad, pad_value)
