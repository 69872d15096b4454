"""Decoder likelihoods ``log p(x|z)`` for the importance-sampled ``log p(x)`` (``likelihood.py``).

Each factory takes a decoder ``f: (R, m) -> (R, ...)`` and returns a callable
``log_likelihood(x, z) -> (R,)``: the log-probability of each input row under the output
distribution the decoder parametrises at the matching latent row, summed over the flattened
elements, in float64 (van den Burg & Williams (2021), Table 1: Bernoulli for MNIST,
Gaussian for CelebA).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LogLikelihood = Callable[[Tensor, Tensor], Tensor]
Decoder = Callable[[Tensor], Tensor]

#: log-probabilities below this are clamped in the Bernoulli likelihood of probabilities, as
#: ``torch.nn.functional.binary_cross_entropy`` does, so that a saturated sigmoid (``pi = 0`` or
#: ``1`` in float32) gives a very small, finite likelihood rather than ``-inf``.
LOG_CLAMP = -100.0


def _decoded(decoder: Decoder, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Decoder outputs and inputs, flattened per row, in float64."""
    out = decoder(z)
    if not isinstance(out, Tensor):
        raise ValueError(
            f"Expected the decoder to return a tensor of outputs but got {type(out).__name__}: "
            "name a decoder that maps (B, m) latents to (B, ...) outputs alone"
        )
    out = out.reshape(z.shape[0], -1)
    target = x.reshape(x.shape[0], -1)
    if out.shape != target.shape:
        raise ValueError(
            f"Expected the decoder to return {target.shape[1]} elements per sample (as many as "
            f"`x`) but got {out.shape[1]}"
        )
    return out.to(torch.float64), target.to(torch.float64)


def finite_range(values: Tensor) -> tuple[float, float] | None:
    """``(min, max)`` of the finite elements of ``values``; ``None`` when there are none.

    Example::

        >>> import torch
        >>> finite_range(torch.tensor([0.5, float("nan"), -2.0]))
        (-2.0, 0.5)
    """
    finite = values[torch.isfinite(values)]
    if not finite.numel():
        return None
    return finite.min().item(), finite.max().item()


def looks_like_probabilities(outputs: Tensor) -> bool:
    """Whether Bernoulli decoder outputs read as probabilities ``pi`` rather than logits ``l``.

    True when every finite output lies in ``[0, 1]`` and at least one lies strictly inside
    ``(0, 1)``. Probabilities (a sigmoid's outputs) always lie in ``[0, 1]``, so a probability
    decoder is never taken for logits unless its outputs are all exactly 0 or 1 (saturated).
    Logits all inside ``[0, 1]`` would mean ``pi = sigmoid(l)`` between 0.5 and 0.73 for every
    element, a decoder that cannot yet tell 0 from 1; logits that are all exactly 0 (a
    zero-initialised last layer) read as logits.

    Example::

        >>> import torch
        >>> looks_like_probabilities(torch.sigmoid(torch.tensor([-3.0, 0.0, 5.0])))
        True
        >>> looks_like_probabilities(torch.tensor([-3.0, 0.0, 5.0]))
        False
        >>> looks_like_probabilities(torch.zeros(3))
        False
    """
    span = finite_range(outputs)
    if span is None or span[0] < 0 or span[1] > 1:
        return False
    return bool(((outputs > 0) & (outputs < 1)).any())


def bernoulli_log_likelihood(decoder: Decoder, *, logits: bool = True) -> LogLikelihood:
    """``log p(x|z)`` of independent Bernoulli outputs: ``(x, z) -> (R,)``.

    ``log p(x|z) = sum_j [x_j log pi_j + (1 - x_j) log(1 - pi_j)]`` over the flattened
    elements ``j``, with ``pi = sigmoid(decoder(z))`` (``logits=True``: computed stably as
    ``x_j l_j - softplus(l_j)``) or ``pi = decoder(z)`` (``logits=False``: each log term clamped
    at ``LOG_CLAMP = -100`` like ``binary_cross_entropy``). Van den Burg's MNIST likelihood
    (van den Burg & Williams (2021), Table 1). ``x`` must lie in ``[0, 1]``
    (grey levels give the usual continuous relaxation, binary ``x`` a true probability), and
    with ``logits=False`` so must the decoder's outputs (a ``ValueError`` otherwise: outputs
    outside ``[0, 1]`` are logits; :func:`looks_like_probabilities` tells the two apart).

    Example::

        >>> import math, torch
        >>> lik = bernoulli_log_likelihood(lambda z: z)  # logit 0: pi = 1/2 for each element
        >>> lik(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2)).item() == 2 * math.log(0.5)
        True
    """
    if not callable(decoder):
        raise ValueError(f"Expected `decoder` to be callable but got {type(decoder).__name__}")

    def log_likelihood(x: Tensor, z: Tensor) -> Tensor:
        out, target = _decoded(decoder, x, z)
        span = finite_range(target)
        if span is not None and (span[0] < 0 or span[1] > 1):
            raise ValueError(
                "Expected `x` in [0, 1] for a Bernoulli likelihood but got values in "
                f"[{span[0]:.4g}, {span[1]:.4g}]: rescale the inputs or use a Gaussian likelihood"
            )
        span = None if logits else finite_range(out)
        if span is not None and (span[0] < 0 or span[1] > 1):
            raise ValueError(
                "Expected the decoder's outputs to be probabilities in [0, 1] (`logits=False`) "
                f"but got values in [{span[0]:.4g}, {span[1]:.4g}]: pass `logits=True` for a "
                "decoder that returns logits"
            )
        if logits:
            terms = -F.binary_cross_entropy_with_logits(out, target, reduction="none")
        else:
            terms = target * out.log().clamp_min(LOG_CLAMP) + (1 - target) * (
                -out
            ).log1p().clamp_min(LOG_CLAMP)
        return terms.sum(dim=1)

    return log_likelihood


def check_scale(scale: float) -> float:
    """``scale`` as a float, or a ``ValueError`` unless it is a finite positive number."""
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise ValueError(f"Expected `scale` to be a positive number but got {scale!r}")
    return float(scale)


def gaussian_log_likelihood(decoder: Decoder, scale: float) -> LogLikelihood:
    """``log p(x|z)`` of a Gaussian with mean ``decoder(z)`` and fixed scale: ``(x, z) -> (R,)``.

    ``log N(x; f(z), sigma^2 I) = -||x - f(z)||^2 / (2 sigma^2) - n log sigma - (n/2) log 2 pi``
    with ``n`` the number of elements per sample, normalising constant included (van den Burg's
    CelebA likelihood with a fixed ``gamma = sigma^2``, van den Burg & Williams (2021)
    Table 1).

    Example::

        >>> import math, torch
        >>> lik = gaussian_log_likelihood(lambda z: z, scale=2.0)
        >>> value = lik(torch.tensor([[2.0]]), torch.zeros(1, 1)).item()
        >>> math.isclose(value, -0.5 - math.log(2.0) - 0.5 * math.log(2 * math.pi))
        True
    """
    if not callable(decoder):
        raise ValueError(f"Expected `decoder` to be callable but got {type(decoder).__name__}")
    sigma = check_scale(scale)

    def log_likelihood(x: Tensor, z: Tensor) -> Tensor:
        out, target = _decoded(decoder, x, z)
        n = target.shape[1]
        sq = (target - out).square().sum(dim=1)
        return -0.5 * sq / sigma**2 - n * math.log(sigma) - 0.5 * n * math.log(2 * math.pi)

    return log_likelihood
