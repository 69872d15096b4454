"""The latent prior ``p(z)``: one home for its log-density, its draws and its typical set.

A prior is given as a *spec*:

- ``None`` or ``"normal"``: the standard normal ``N(0, I_m)`` of VAEs and GANs;
- ``"sphere"``: the uniform distribution on the unit sphere ``S^{m-1}``, where GLO projects its
  latents (Bojanowski et al. (2018), sec. 3.1); its log-density with respect to the sphere's surface
  measure is the constant ``-log |S^{m-1}|``, ``|S^{m-1}| = 2 pi^{m/2} / Gamma(m/2)``;
- any ``torch.distributions.Distribution`` over ``R^m`` (``log_prob`` of a ``(B, m)`` batch gives
  ``(B,)``, or ``(B, m)`` independent terms that are summed).

The induced density of Feiszli (2017), eq. 2 needs ``log p(z)``; the geometry is measured where the
generator is sampled, i.e. inside the prior's typical set (Feiszli (2017), sec. 3).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from scipy import stats
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal

Prior = str | Distribution | None
PriorSpec = Literal["normal", "sphere"] | Distribution

#: Probability mass of ``N(0, I_m)`` left out of its typical shell on each side: the norm is
#: kept within the ``TYPICAL_TAIL`` and ``1 - TYPICAL_TAIL`` quantiles of the chi distribution.
TYPICAL_TAIL = 1e-3


def check_prior(prior: Prior) -> PriorSpec:
    """The prior spec in its canonical form: ``"normal"``, ``"sphere"`` or the Distribution.

    Example::

        >>> check_prior(None), check_prior("sphere")
        ('normal', 'sphere')
    """
    if prior is None or (isinstance(prior, str) and prior == "normal"):
        return "normal"
    if isinstance(prior, str) and prior == "sphere":
        return "sphere"
    if isinstance(prior, Distribution):
        return prior
    raise ValueError(
        "Expected `prior` to be None or 'normal' (standard normal), 'sphere' (uniform on the unit "
        f"sphere) or a torch Distribution but got {prior!r}"
    )


def log_sphere_area(m: int) -> float:
    """``log |S^{m-1}| = log 2 + (m / 2) log pi - log Gamma(m / 2)``, the unit sphere in ``R^m``.

    Example::

        >>> import math
        >>> round(math.exp(log_sphere_area(3)) / math.pi, 12)  # 4 pi
        4.0
    """
    return math.log(2.0) + 0.5 * m * math.log(math.pi) - math.lgamma(0.5 * m)


def log_prior(z: Tensor, prior: Prior = None) -> Tensor:
    """``log p(z)`` per point: ``(...,)`` float64 for latents ``(..., m)``.

    ``"normal"``: ``-(|z|^2 + m log 2 pi) / 2``. ``"sphere"``: ``-log |S^{m-1}|`` at every point
    (the density of ``z / |z|``; the radial part is not a density of the sphere prior). A
    Distribution: its ``log_prob``, summed over the last dim when it gives ``(B, m)``.

    Example::

        >>> import math, torch
        >>> log_prior(torch.zeros(1, 2)) + math.log(2 * math.pi)
        tensor([0.], dtype=torch.float64)
    """
    spec = check_prior(prior)
    m = z.shape[-1]
    if spec == "normal":
        z64 = z.to(torch.float64)
        return -0.5 * (z64.square().sum(dim=-1) + m * math.log(2 * math.pi))
    if spec == "sphere":
        return torch.full(z.shape[:-1], -log_sphere_area(m), dtype=torch.float64, device=z.device)
    flat = z.reshape(-1, m)
    logp = spec.log_prob(flat)
    if logp.shape == flat.shape:  # a batch of m independent scalars, not an event of size m
        logp = logp.sum(dim=-1)
    if logp.shape != flat.shape[:1]:
        raise ValueError(
            f"Expected `prior.log_prob` to give (B,) or (B, m) values but got {tuple(logp.shape)}"
        )
    return logp.to(torch.float64).reshape(z.shape[:-1])


def _open_uniform(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Float64 uniforms in the open interval ``(0, 1)`` (so an inverse CDF stays finite)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device)
    return u.clamp(torch.finfo(torch.float64).tiny, 1.0 - torch.finfo(torch.float64).eps)


def sample_prior(
    prior: Prior,
    n: int,
    m: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` draws of an ``m``-dimensional prior, ``(n, m)``, from ``generator`` only.

    Never touches the global RNG streams (a Distribution's own ``sample()`` would). Draws are
    made on the generator's device and then moved to ``device`` (``None``: that device).

    - ``"normal"``: ``torch.randn``; ``"sphere"``: ``torch.randn`` rows divided by their norm
      (uniform on ``S^{m-1}`` by the rotation invariance of ``N(0, I)``).
    - A Distribution with an inverse CDF (``Normal``, ``Uniform``, ``Laplace``, ``Cauchy``, ...;
      scalar or with batch shape ``(m,)``, plain or in ``Independent``): ``icdf(u)`` of float64
      uniforms ``u`` in ``(0, 1)`` (inverse-transform sampling).
    - A ``MultivariateNormal`` with event ``(m,)``: ``loc + L eps``, ``L`` its ``scale_tril``.
    - Anything else fails with a ``ValueError`` naming ``prior``.

    Example::

        >>> import torch
        >>> z = sample_prior("sphere", 3, 4, generator=torch.Generator().manual_seed(0))
        >>> z.shape, torch.allclose(z.norm(dim=1), torch.ones(3))
        (torch.Size([3, 4]), True)
    """
    spec = check_prior(prior)
    if spec in ("normal", "sphere"):
        z = torch.randn(n, m, generator=generator, dtype=dtype, device=generator.device)
        if spec == "sphere":
            z = z / z.norm(dim=1, keepdim=True)
        return z.to(device or z.device)
    base = spec.base_dist if isinstance(spec, Independent) else spec
    shape = tuple(spec.batch_shape + spec.event_shape)
    if shape not in ((), (m,)):
        raise ValueError(
            f"Expected `prior` to be a distribution over R^{m} (shape () or ({m},)) but got "
            f"batch shape {tuple(spec.batch_shape)} and event shape {tuple(spec.event_shape)}"
        )
    if isinstance(spec, MultivariateNormal):
        eps = torch.randn(n, m, generator=generator, dtype=torch.float64, device=generator.device)
        tril = spec.scale_tril.to(torch.float64)
        z = spec.loc.to(torch.float64) + eps.to(tril.device) @ tril.mT
        return z.to(dtype=dtype, device=device or generator.device)
    if base.event_shape == ():
        u = _open_uniform((n, m), generator)
        try:
            z = base.icdf(u.to(base.mean.device))
        except NotImplementedError:
            pass
        else:
            return z.to(dtype=dtype, device=device or generator.device)
    raise ValueError(
        f"Expected `prior` to be sampleable with a torch.Generator (one with an inverse CDF such "
        f"as Normal, Uniform or Laplace, plain or in Independent, or a MultivariateNormal) but got "
        f"{type(spec).__name__}: its sample() would draw from the global RNG. Pass a prior of one "
        "of those kinds, or latents drawn yourself"
    )


def _chi_bounds(m: int) -> tuple[float, float]:
    lo, hi = stats.chi.ppf([TYPICAL_TAIL, 1.0 - TYPICAL_TAIL], m)
    return float(lo), float(hi)


def project_to_typical_set(z: Tensor, prior: Prior = None) -> Tensor:
    """``z`` moved radially into the prior's typical set, same shape and dtype.

    ``"normal"``: ``|z|`` of ``N(0, I_m)`` follows the chi distribution with ``m`` degrees of
    freedom; the norm is clamped into its ``[0.001, 0.999]`` quantiles, the direction kept (a
    latent recovered far outside, e.g. norm 130 on 100 dims where ``|z|`` is 7.9 to 12.2, is
    measured where the generator is sampled). ``"sphere"``: ``z / |z|``. Any other Distribution:
    returned unchanged (no typical set is known for it). A zero row takes the direction
    ``(1, ..., 1) / sqrt(m)``.

    Example::

        >>> import torch
        >>> project_to_typical_set(torch.tensor([[3.0, 4.0]]), "sphere")
        tensor([[0.6000, 0.8000]])
    """
    spec = check_prior(prior)
    if isinstance(spec, Distribution):
        return z
    z64 = z.to(torch.float64)
    m = z.shape[-1]
    norm = z64.norm(dim=-1, keepdim=True)
    direction = torch.where(norm > 0, z64 / norm.clamp_min(1e-300), 1.0 / math.sqrt(m))
    if spec == "sphere":
        return direction.to(z.dtype)
    lo, hi = _chi_bounds(m)
    return (direction * norm.clamp(lo, hi)).to(z.dtype)


def search_bound(prior: Prior, m: int) -> float:
    """How far a latent line can run inside the prior's typical set: its diameter.

    ``"normal"``: ``2 chi_{0.999}(m)`` (the typical ball of :func:`project_to_typical_set`; any
    segment between two of its points is shorter), e.g. 7.4 for ``m = 2``, 24.4 for ``m = 100``.
    ``"sphere"``: 2. Any other Distribution: the normal bound times its largest finite marginal
    standard deviation (``prior.stddev``; 1 when it has none).

    Example::

        >>> search_bound("sphere", 5)
        2.0
    """
    spec = check_prior(prior)
    if spec == "sphere":
        return 2.0
    scale = 1.0
    if isinstance(spec, Distribution):
        try:
            std = spec.stddev.detach().to(torch.float64)
        except NotImplementedError:
            std = None
        if std is not None and std.numel() and bool(torch.isfinite(std).all()):
            scale = float(std.max())
    return 2.0 * _chi_bounds(m)[1] * scale
