"""Importance-sampled log-likelihood of a latent-variable model (van den Burg & Williams (2021),
eq. 9).

The decoder likelihoods ``log p(x|z)`` it takes are built in ``decoder_likelihood.py``.

van den Burg & Williams (2021), eq. 9: for a model with prior ``p(z)``, decoder
likelihood ``p(x|z)`` and an encoder ``q(z|x)``,

    p(x) ~ (1/N) sum_{l=1}^N p(x|z_l) p(z_l) / q(z_l|x),    z_l ~ q(z|x),

computed in log space: ``log p(x) ~ logsumexp_l [log p(x|z_l) + log p(z_l) - log q(z_l|x)]
- log N``. The weights' mean is unbiased for ``p(x)``; its log is biased low for finite ``N``
(Jensen), by less as ``N`` grows, and is exact for every ``N`` when ``q`` is the true posterior.
Van den Burg uses ``N = 256`` (MNIST) and ``N = 128`` (CIFAR-10, CelebA); the default is 128.

Randomness: with ``generator=None`` the samples come from ``q.sample`` and the global RNG. With a
``torch.Generator`` the global RNG is never touched: for Normal, ``Independent(Normal)`` and
``MultivariateNormal`` posteriors the standard-normal noise is drawn from the generator (on the
generator's device, then moved, so a CPU generator gives the same samples on every device) and
``z = loc + scale * eps``; any other distribution is sampled inside
``torch.random.fork_rng`` seeded from the generator. All ``N x B`` latents are drawn before the
decoder runs, so the result does not depend on ``chunk_size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.density import _log_prior
from lightning_memwatch.functional.jacobian import DEFAULT_CHUNK_BYTES, _check_chunk_size

Posterior = Callable[[Tensor], Distribution]
LogLikelihood = Callable[[Tensor, Tensor], Tensor]
Decoder = Callable[[Tensor], Tensor]


# ------------------------------------------------------------------------- posteriors
def as_posterior(output: object) -> Distribution:
    """An encoder's output as a distribution over ``(B, m)`` latents.

    A ``torch.distributions.Distribution`` is returned as it is. A ``(mean, log_var)`` pair of
    ``(B, m)`` tensors is the diagonal Gaussian ``N(mean, diag(exp(log_var)))`` (van den Burg's
    encoders, van den Burg & Williams (2021), sec. B.2), built without argument
    validation so that a NaN row gives NaN instead of an exception.

    Example::

        >>> import torch
        >>> q = as_posterior((torch.zeros(2, 3), torch.zeros(2, 3)))
        >>> q.batch_shape, q.event_shape
        (torch.Size([2]), torch.Size([3]))
    """
    if isinstance(output, Distribution):
        return output
    if (
        isinstance(output, (tuple, list))
        and len(output) == 2
        and all(isinstance(t, Tensor) for t in output)
        and output[0].ndim == 2
        and output[0].shape == output[1].shape
    ):
        mean, log_var = output
        base = Normal(mean, (0.5 * log_var).exp(), validate_args=False)
        return Independent(base, 1, validate_args=False)
    got = (
        f"a tensor of shape {tuple(output.shape)}"
        if isinstance(output, Tensor)
        else type(output).__name__
    )
    if isinstance(output, (tuple, list)):
        got = "a tuple of " + ", ".join(
            str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__ for t in output
        )
    raise ValueError(
        "Expected the encoder to return a torch Distribution over (B, m) latents or a "
        f"(mean, log_var) pair of (B, m) tensors but got {got}: the importance-sampled "
        "likelihood needs a probabilistic encoder q(z|x)"
    )


def posterior_from_encoder(encoder: Callable[[Tensor], object]) -> Posterior:
    """``x -> q(z|x)`` from an encoder that returns a distribution or ``(mean, log_var)``
    (see :func:`as_posterior`)."""

    def posterior(x: Tensor) -> Distribution:
        return as_posterior(encoder(x))

    return posterior


def _gaussian_parts(q: Distribution) -> tuple[Tensor, Callable[[Tensor], Tensor]] | None:
    """``(loc, eps -> loc + scale eps)`` for the Gaussian posteriors sampled from a generator."""
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal):
        q = q.base_dist
    if isinstance(q, Normal):
        return q.loc, lambda eps: q.loc + q.scale * eps
    if isinstance(q, MultivariateNormal):
        tril = q.scale_tril
        return q.loc, lambda eps: q.loc + (tril @ eps.unsqueeze(-1)).squeeze(-1)
    return None


def sample_posterior(
    q: Distribution, num_samples: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """``num_samples`` draws from ``q`` over ``(B, m)`` latents: ``(N, B, m)``.

    With ``generator=None``: ``q.sample((N,))`` (global RNG). With a generator the global RNG is
    left as it was (see the module docstring).
    """
    shape = torch.Size((num_samples,)) + q.batch_shape + q.event_shape
    if len(shape) != 3:
        raise ValueError(
            "Expected the posterior to be a distribution over (B, m) latents (batch_shape + "
            f"event_shape of 2 dims) but got batch_shape {tuple(q.batch_shape)} and "
            f"event_shape {tuple(q.event_shape)}"
        )
    if generator is None:
        return q.sample((num_samples,))
    parts = _gaussian_parts(q)
    if parts is not None:
        loc, transform = parts
        dtype = loc.dtype if loc.is_floating_point() else torch.get_default_dtype()
        eps = torch.randn(shape, generator=generator, dtype=dtype, device=generator.device)
        return transform(eps.to(loc.device))
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed(seed)
        return q.sample((num_samples,))


# --------------------------------------------------------------------------- estimate
def _sum_event(logp: Tensor, z: Tensor, what: str) -> Tensor:
    """``(N, B)`` log-densities from ``(N, B)`` or ``(N, B, m)`` independent terms."""
    if logp.shape == z.shape:
        logp = logp.sum(dim=-1)
    if logp.shape != z.shape[:2]:
        raise ValueError(
            f"Expected `{what}.log_prob` of (N, B, m) latents to give (N, B) or (N, B, m) values "
            f"but got {tuple(logp.shape)}"
        )
    return logp.to(torch.float64)


def _default_chunk(x: Tensor, num_samples: int) -> int:
    """Samples per decoder call so that a chunk's outputs (float64, a few copies) take about
    ``DEFAULT_CHUNK_BYTES``; ``x`` stands in for the output size."""
    per_sample = 4 * 8 * max(x[0].numel(), 1) * x.shape[0]
    return max(1, min(num_samples, DEFAULT_CHUNK_BYTES // per_sample))


def importance_estimate(
    x: Tensor,
    q: Distribution,
    z: Tensor,
    log_likelihood: LogLikelihood,
    *,
    prior: Distribution | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """``logsumexp_l [log p(x|z_l) + log p(z_l) - log q(z_l|x)] - log N`` at given samples.

    The estimate of :func:`importance_log_likelihood` at latents ``z`` (``(N, B, m)``) already
    drawn from ``q`` (the posterior of ``x``); ``log_likelihood`` runs on ``chunk_size`` samples
    (``chunk_size * B`` rows) at a time. Returns ``(B,)`` float64, NaN where not finite.
    """
    if not isinstance(z, Tensor) or z.ndim != 3 or z.shape[1] != x.shape[0]:
        got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"Expected `z` to be (N, {x.shape[0]}, m) latents but got {got}")
    _check_chunk_size(chunk_size)
    num, batch, dim = z.shape
    if batch == 0:  # an empty DDP shard: torch's Independent.log_prob cannot reshape 0 rows
        return torch.empty(0, dtype=torch.float64, device=x.device)
    log_q = _sum_event(q.log_prob(z), z, "posterior")
    log_p = _log_prior(z.reshape(num * batch, dim), prior).reshape(num, batch)
    size = chunk_size or _default_chunk(x, num)
    parts = []
    for start in range(0, num, size):
        zc = z[start : start + size]
        rows = zc.shape[0] * batch
        xc = x.unsqueeze(0).expand(zc.shape[0], *x.shape).reshape(rows, *x.shape[1:])
        values = log_likelihood(xc, zc.reshape(rows, dim))
        if not isinstance(values, Tensor) or values.shape != (rows,):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(
                f"Expected `log_likelihood(x, z)` to return one value per row, ({rows},), but "
                f"got {got}: sum log p(x|z) over each sample's elements"
            )
        parts.append(values.to(torch.float64).reshape(zc.shape[0], batch))
    log_w = torch.cat(parts) + log_p - log_q
    estimate = torch.logsumexp(log_w, dim=0) - math.log(num)
    return torch.where(torch.isfinite(estimate), estimate, torch.nan)


def importance_log_likelihood(
    x: Tensor,
    posterior: Posterior,
    log_likelihood: LogLikelihood,
    *,
    prior: Distribution | None = None,
    num_samples: int = 128,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Importance-sampled ``log p(x)`` per sample (van den Burg & Williams (2021), eq. 9).

    van den Burg & Williams (2021), eq. 9 in log space::

        log p(x) ~ logsumexp_l [log p(x|z_l) + log p(z_l) - log q(z_l|x)] - log N,
        z_l ~ q(z|x), l = 1..N.

    Runs under ``torch.no_grad()``.

    Args:
        x: inputs, ``(B, ...)``.
        posterior: maps ``x`` to a ``torch.distributions.Distribution`` over ``(B, m)`` latents
            (batch ``B``, event ``m``; or batch ``(B, m)`` of independent scalars);
            :func:`posterior_from_encoder` wraps an encoder returning ``(mean, log_var)``.
        log_likelihood: ``(x, z) -> log p(x|z)``, ``(R,)`` for ``R`` rows of inputs and latents;
            see :func:`bernoulli_log_likelihood` and :func:`gaussian_log_likelihood`.
        prior: latent prior (a ``Distribution``); ``None``: standard normal ``N(0, I)``.
        num_samples: ``N``, importance samples per input.
        chunk_size: samples per ``log_likelihood`` call (``chunk_size * B`` rows); ``None``: sized
            to a memory budget. The result does not depend on it.
        generator: draws the samples without touching the global RNG (module docstring);
            ``None``: ``q.sample`` with the global RNG.

    Returns:
        ``(B,)`` float64; NaN for a row whose estimate is not finite (a NaN input or weight).

    Example::

        >>> import math, torch
        >>> from torch.distributions import Independent, Normal
        >>> from lightning_memwatch.functional import gaussian_log_likelihood
        >>> # x = z + noise(1): p(x) = N(x; 0, 2); the exact posterior is N(x / 2, 1 / 2)
        >>> def posterior(x):
        ...     return Independent(Normal(x / 2, math.sqrt(0.5) * torch.ones_like(x)), 1)
        >>> lik = gaussian_log_likelihood(lambda z: z, scale=1.0)
        >>> x = torch.tensor([[0.0], [2.0]])
        >>> importance_log_likelihood(x, posterior, lik, num_samples=4)
        tensor([-1.2655, -2.2655], dtype=torch.float64)
        >>> -0.5 * math.log(2 * math.pi * 2), -0.5 * math.log(2 * math.pi * 2) - 1.0
        (-1.2655..., -2.2655...)
    """
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"Expected `x` to be a non-empty (B, ...) batch but got {got}")
    for name, value in (("posterior", posterior), ("log_likelihood", log_likelihood)):
        if not callable(value):
            raise ValueError(f"Expected `{name}` to be callable but got {type(value).__name__}")
    if prior is not None and not isinstance(prior, Distribution):
        raise ValueError(
            f"Expected `prior` to be a torch Distribution or None but got {type(prior).__name__}"
        )
    check_int("num_samples", num_samples)
    _check_chunk_size(chunk_size)
    with torch.no_grad():
        q = posterior(x)
        if not isinstance(q, Distribution):
            raise ValueError(
                "Expected `posterior(x)` to return a torch Distribution but got "
                f"{type(q).__name__}: wrap an encoder that returns (mean, log_var) with "
                "`posterior_from_encoder`"
            )
        z = sample_posterior(q, num_samples, generator=generator)
        return importance_estimate(x, q, z, log_likelihood, prior=prior, chunk_size=chunk_size)
