"""Does a generator copy its training data? A check that uses no memwatch code.

For ``N`` generated samples ``g``, a training set ``T`` and a held-out set ``H`` of the same
size ``k`` (the first ``k`` of each, so neither set is favoured by being larger), in float64
numpy with samples flattened:

- ``d_T(g) = min_t |g - t|`` and ``d_H(g) = min_h |g - h|`` (Euclidean);
- ``train_nearest``: the share of samples with ``d_T(g) < d_H(g)``. ``T`` and ``H`` are draws of
  the same distribution, so a generator that samples that distribution scores about 0.5 and one
  that copies training samples about 1;
- ``ratio``: the median of ``d_T(g) / d_H(g)``, about 1 without copying, near 0 for near-copies;
- ``near_copies``: the share of samples with ``d_T(g) < d_H(g) / 2``, twice as close to a
  training sample as to any held-out one;
- ``copied``: how many distinct training samples are the nearest of some near-copy (of ``k``);
- ``distance``: the median of ``d_T(g)``, in pixel units.

This is the nearest-neighbour test of generated samples against training and held-out data
used to show memorization in GANs (Webster et al. (2019), sec. 2, compare nearest-neighbour
distances; Meehan et al. (2020) build ``C_T`` on them), reduced to the two equal-size sets it needs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _nearest(queries: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    squared = (queries**2).sum(1)[:, None] - 2 * queries @ pool.T + (pool**2).sum(1)[None]
    index = squared.argmin(1)
    return np.sqrt(np.maximum(squared[np.arange(len(queries)), index], 0.0)), index


def copy_check(generated: Tensor, train: Tensor, held_out: Tensor) -> dict[str, float]:
    """The numbers of the module docstring for ``generated`` against ``train`` and ``held_out``.

    Example::

        >>> train, held = torch.eye(4)[:2], torch.eye(4)[2:]
        >>> copy_check(train.repeat(3, 1), train, held)["train_nearest"]
        1.0
    """
    k = min(len(train), len(held_out))
    g = generated.detach().reshape(len(generated), -1).cpu().double().numpy()
    t = train[:k].reshape(k, -1).cpu().double().numpy()
    h = held_out[:k].reshape(k, -1).cpu().double().numpy()
    d_t, index = _nearest(g, t)
    d_h, _ = _nearest(g, h)
    ratio = d_t / np.maximum(d_h, 1e-12)
    near = ratio < 0.5
    return {
        "train_nearest": float((d_t < d_h).mean()),
        "ratio": float(np.median(ratio)),
        "near_copies": float(near.mean()),
        "copied": float(len(set(index[near].tolist()))),
        "distance": float(np.median(d_t)),
        "k": float(k),
    }


def generated_samples(decoder: torch.nn.Module, latent_dim: int, n: int = 512) -> Tensor:
    """``n`` samples of ``decoder`` at latents from ``N(0, I)`` drawn by a generator of their own
    (seed 0), in eval mode and without gradients; the global RNG and the mode are left alone."""
    z = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(0))
    was_training = decoder.training
    decoder.eval()
    try:
        with torch.no_grad():
            return decoder(z.to(next(decoder.parameters()).device)).cpu()
    finally:
        decoder.train(was_training)
