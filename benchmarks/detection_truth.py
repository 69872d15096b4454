"""The independent ground truths of ``benchmarks/detection.py``: plain torch and float64 numpy,
no memwatch code, computed from the model as it is at an epoch.

- **Autoencoders with an encoder** (mlp, conv): the reconstruction error ``mean((D(mu(x)) -
  x)^2)`` of each training digit (all of a memorizing run's 32, the first 256 of a generalizing
  run's) and of each of the 256 held-out digits; ``recon_ratio`` is the held-out median over
  the training median. A model that memorizes reconstructs its training digits far better than
  held-out ones (ratio well above 1); a generalizing one about as well (ratio near 1).
- **Decoders without encoder** (GLO): the same ratio with each digit's error minimised over the
  latent by Adam from several prior starts (:func:`recovered_errors`), the same procedure for
  both splits (the trained latents are not used).
- **Generators** (GAN, and the DDPM's samples): :func:`copy_shares` of ``n >= 256`` samples.
  ``copy_share``: the share whose nearest training image is closer than a third of the second
  nearest, ``d1 / d2 < 1/3`` (Yoon et al. 2023; Gu et al. 2023, arXiv:2310.02664);
  ``closer_than_heldout``: the share whose nearest training image is closer than their nearest
  held-out image, against equal-size sets (the first ``k`` of each), about 0.5 without copying
  (Webster et al. (2019), sec. 2; ``examples/nearest_copies.py``); ``heldout_distance``: the
  median over held-out images of the distance to the nearest sample, how well the samples cover
  unseen data (a generator's held-out loss: it rises when the samples collapse onto copies).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

#: Training digits a reconstruction ground truth reads at most (all of a memorizing run's).
MAX_TRAIN = 256


def _flat(images: Tensor | np.ndarray) -> np.ndarray:
    array = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    return array.reshape(len(array), -1).astype(np.float64)


def squared_distances(queries: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """``|q_i - p_j|^2``, ``(len(queries), len(pool))``, clipped at 0."""
    out = (queries**2).sum(1)[:, None] - 2 * queries @ pool.T + (pool**2).sum(1)[None]
    return np.maximum(out, 0.0)


def copy_shares(samples: Tensor, train: Tensor, held_out: Tensor) -> dict[str, float]:
    """The generator numbers of the module docstring.

    Example::

        >>> train, held = torch.eye(4)[:2] * 4, torch.eye(4)[2:] * 4
        >>> copy_shares(train.repeat(3, 1), train, held)["copy_share"]
        1.0
    """
    g, t, h = _flat(samples), _flat(train), _flat(held_out)
    d_train = np.sqrt(squared_distances(g, t))
    two = np.sort(d_train, axis=1)[:, :2]
    ratio = two[:, 0] / np.maximum(two[:, 1], 1e-12)
    k = min(len(t), len(h))
    d_t = d_train[:, :k].min(1)
    d_h = np.sqrt(squared_distances(g, h[:k])).min(1)
    coverage = np.sqrt(squared_distances(h, g)).min(1)
    return {
        "copy_share": float((ratio < 1 / 3).mean()),
        "closer_than_heldout": float((d_t < d_h).mean()),
        "heldout_distance": float(np.median(coverage)),
    }


def ratio_of_medians(train_errors: np.ndarray, val_errors: np.ndarray) -> float:
    """``median(val) / median(train)``."""
    return float(np.median(val_errors) / max(float(np.median(train_errors)), 1e-12))


def ratio_truth(train_errors: np.ndarray, val_errors: np.ndarray) -> dict[str, float]:
    """The autoencoder classes' ground truth: ``recon_ratio`` (:func:`ratio_of_medians`) and
    the two medians ``recon_train``, ``recon_val``."""
    return {
        "recon_ratio": ratio_of_medians(train_errors, val_errors),
        "recon_train": float(np.median(train_errors)),
        "recon_val": float(np.median(val_errors)),
    }


def reconstruction_errors(reconstruct: Callable[[Tensor], Tensor], images: Tensor) -> np.ndarray:
    """Per-image ``mean((reconstruct(x) - x)^2)``, float64, without gradients."""
    with torch.no_grad():
        out = torch.cat([reconstruct(chunk) for chunk in images.split(256)])
    return ((_flat(out) - _flat(images)) ** 2).mean(1)


def recovered_errors(
    decoder: torch.nn.Module,
    images: Tensor,
    latent_dim: int,
    steps: int = 200,
    restarts: int = 4,
    seed: int = 0,
    lr: float = 0.05,
) -> np.ndarray:
    """Per-image ``min_z mean((decoder(z) - x)^2)`` by Adam on ``z`` from ``restarts`` starts
    ``z ~ N(0, I)`` (a generator of its own, seeded), the best start per image. Gradients go to
    ``z`` only (``torch.autograd.grad``): the decoder's ``.grad`` is untouched."""
    generator = torch.Generator().manual_seed(seed)
    x = images.repeat(restarts, *([1] * (images.dim() - 1)))
    z = torch.randn(len(x), latent_dim, generator=generator).to(x.device).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = ((decoder(z) - x) ** 2).flatten(1).mean(1).sum()
            optimizer.zero_grad()
            (z.grad,) = torch.autograd.grad(loss, z)
            optimizer.step()
    with torch.no_grad():
        errors = ((decoder(z) - x) ** 2).flatten(1).mean(1)
    return errors.reshape(restarts, len(images)).min(0).values.double().cpu().numpy()


def evaluating(model: torch.nn.Module) -> Callable[[Callable[[], dict]], dict]:
    """Run a ground truth in eval mode and restore every submodule's mode afterwards."""

    def run(compute: Callable[[], dict]) -> dict:
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            return compute()
        finally:
            for module, mode in modes.items():
                module.train(mode)

    return run
