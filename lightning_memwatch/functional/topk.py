"""The ``k`` largest singular values of a decoder's Jacobian, without forming the Jacobian.

For ``f: R^m -> R^n`` the Jacobian ``J = df/dz`` (Feiszli (2017), sec. 2.1) is used only as an
operator: ``J V`` by forward-mode ``torch.func.jvp`` (a ``vmap`` over the columns of ``V``, all
points of a chunk in one pass) and ``J^T U`` by reverse-mode ``torch.func.vjp`` with respect to
the latents only (a parameter's ``.grad`` is never written). On ``G = J^T J`` it runs the
randomized block Krylov method of Musco & Musco 2015 (Alg. 2; the randomized range finder of
Halko, Martinsson & Tropp 2011 sec. 4.3-4.4 with its power steps kept as a Krylov basis):

- ``V_0``: orthonormal basis of an ``m x l`` Gaussian test block, ``l = k + oversample``;
- ``V_j``: an orthonormal basis of the part of ``G V_{j-1}`` orthogonal to
  ``K_{j-1} = [V_0 ... V_{j-1}]`` (block Gram-Schmidt twice, then ``W (W^T W)^{-1/2}``, float64;
  see :func:`_orthonormal_extension`), for ``j = 1 ... q``, ``q = iterations``;
- Rayleigh-Ritz on ``K = [V_0 ... V_q]`` (``L = (q + 1) l`` columns): the singular values of
  ``J K`` from the eigenvalues of its float64 Gram ``(J K)^T (J K)``. They are lower bounds,
  ``s_i(J K) <= s_i(J)`` (Cauchy interlacing), exact when ``K`` holds the top singular
  vectors; the top right-singular vector ``v_1`` of ``J`` is ``K`` times the top eigenvector.

Cost per point: ``(q + 1) l`` Jacobian-vector and ``q l`` vector-Jacobian products (about one
forward pass each) and ``O((m + n) L^2)`` float64 algebra, against ``m`` Jacobian-vector
products, an ``O(n m^2)`` Gram and an ``O(m^3)`` eigen-solve on the exact path. Memory per
chunk: ``chunk * n * L`` Krylov images (float32 plus one float64 copy) and ``chunk * m * L``.

Accuracy (measured in ``tests/functional/test_topk.py``, float32 decoders, ``k = 32``): with the
default ``q = 1``, ``p = 8`` the values are within ``5e-4`` relative of the exact ones when
``s_{k+1} <= s_k / 10``, and exact (float32 precision) when the rank is at most ``L`` or the
spectrum is flat. Without such a gap the values near ``s_k`` come out low: 4-29% with a gap of
only 2x, 8-21% under geometric or ``1/sqrt(i)`` decay (m = 256-1,024), ``s_1`` within 5%; on
the random-weight decoders of ``benchmarks/scaling.py`` (nearly flat spectra) 7-22%. ``q = 2``
costs ``5 l`` products instead of ``3 l`` and brings these to ``6e-4``, 5% and 0.5-9%.

A decoder with an op that has no forward-mode rule gets the top ``k`` of its exact spectrum from
the reverse-mode Jacobian instead (:func:`_exact_top_k`; announced once, see ``autodiff``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_memwatch.functional.autodiff import fallback_attempts, with_fallback
from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.jacobian import (
    DEFAULT_CHUNK_BYTES,
    Decoder,
    _check_chunk_size,
    _check_latents,
    as_plain_tensor,
    differentiable_context,
    finite_outputs,
    fixed_randomness,
    map_chunks,
    push_block,
)
from lightning_memwatch.functional.reverse import reverse_jacobian

#: Seed of the test block when no ``generator`` is given: every call draws the same block, so a
#: curve over epochs moves with the model, not with the draws.
DEFAULT_SEED = 0
#: Relative size (to the largest) below which a new Krylov direction counts as already in the
#: span and is dropped (a zero column) rather than normalised from round-off; the kept ones are
#: orthonormal to about ``1e-16 / DROP_TOL = 1e-10`` in float64.
DROP_TOL = 1e-6


def _check_top_k(k: int, m: int) -> int:
    check_int("top_k", k)
    if k > m:
        raise ValueError(f"Expected `top_k` to be at most the latent size m = {m} but got {k}")
    return k


def _check_output_size(k: int, n: int) -> None:
    if k > n:
        raise ValueError(f"Expected `top_k` to be at most the output size n = {n} but got {k}")


def start_block(
    m: int, width: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Orthonormal basis ``(m, width)`` float64 of a Gaussian block drawn from ``generator``
    (``None``: a fresh one seeded with :data:`DEFAULT_SEED`; the global RNG is never used)."""
    if generator is None:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    elif not isinstance(generator, torch.Generator):
        raise ValueError(
            f"Expected `generator` to be a torch.Generator or None but got {type(generator)}"
        )
    omega = torch.randn(m, width, generator=generator, dtype=torch.float64, device=generator.device)
    return torch.linalg.qr(omega.to(device)).Q


def _finite_square(a: Tensor) -> tuple[Tensor, Tensor]:
    """Small ``(b, l, l)`` matrices with the non-finite ones replaced by ``I`` (LAPACK never
    sees a NaN), and the ``(b,)`` mask of the finite ones."""
    finite = torch.isfinite(a).flatten(1).all(dim=-1)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return torch.where(finite[:, None, None], a, eye), finite


def _orthonormal_extension(w: Tensor, blocks: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Orthonormal columns spanning the part of ``w`` ``(b, m, l)`` orthogonal to ``blocks``.

    Block classical Gram-Schmidt twice ("twice is enough") against the orthonormal blocks,
    then ``W U D^{-1/2}`` from ``eigh(W^T W) = U D U^T``: only batched products and an
    ``l x l`` eigen-solve. Directions with ``d <= DROP_TOL^2 * d_max`` (numerically already in
    the span: a rank-deficient ``J``, or ``K`` filling ``R^m``) become zero columns, which
    push zero images and add zero Ritz values. Also returns the mask of finite points.
    """
    for _ in range(2):
        for block in blocks:
            w = w - block @ (block.mT @ w)
    gram, finite = _finite_square(w.mT @ w)
    d, u = torch.linalg.eigh(gram)
    tiny = torch.finfo(d.dtype).tiny
    scale = torch.where(d > DROP_TOL**2 * d[..., -1:].clamp_min(tiny), d.clamp_min(tiny), 0.0)
    return w @ (u * scale.rsqrt().nan_to_num(0.0, posinf=0.0)[..., None, :]), finite


def _krylov_chunk(
    f: Decoder,
    z: Tensor,
    start: Tensor,
    k: int,
    iterations: int,
    rewind: Callable[[], None],
    vector: bool,
) -> Tensor:
    """Block Krylov on one chunk of points: ``(b, k)`` float64 ``s`` descending, then ``v_1``
    ``(b, m)`` when ``vector``; NaN rows where the output or a product is not finite."""
    batch, dim = z.shape
    width = start.shape[1]
    rewind()
    outputs, image = push_block(f, z, start)
    n = image[0, 0].numel()
    _check_output_size(k, n)
    finite = finite_outputs(outputs)
    blocks, images = [start], [image]
    pull = None
    for _ in range(iterations):
        if width * len(blocks) >= dim:  # K spans R^m: Rayleigh-Ritz is exact
            break
        if pull is None:
            rewind()
            pull = torch.func.vjp(f, z)[1]
        (g_block,) = torch.func.vmap(pull)(images[-1])  # J^T J V, (l, b, m)
        block, ok = _orthonormal_extension(g_block.permute(1, 2, 0).to(torch.float64), blocks)
        finite &= ok
        blocks.append(block)
        rewind()
        images.append(push_block(f, z, block)[1])
    y = torch.empty(batch, width * len(images), n, dtype=torch.float64, device=z.device)
    for i, image in enumerate(images):  # J K, (b, L, n), n innermost for the Gram
        y[:, i * width : (i + 1) * width] = image.reshape(width, batch, n).transpose(0, 1)
    gram, ok = _finite_square(y @ y.mT)  # (J K)^T (J K) = K^T J^T J K
    finite &= ok
    if not vector:
        s = torch.linalg.eigvalsh(gram).flip(-1)[..., :k].clamp_min(0).sqrt()
        return torch.where(finite[:, None], s, torch.nan)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    s = eigenvalues.flip(-1)[..., :k].clamp_min(0).sqrt()
    top = eigenvectors[..., -1:]
    v = sum(
        (block @ top[:, i * width : (i + 1) * width]).squeeze(-1) for i, block in enumerate(blocks)
    )
    v = v * v.gather(-1, v.abs().argmax(dim=-1, keepdim=True)).sign()
    return torch.where(finite[:, None], torch.cat([s, v], dim=-1), torch.nan)


def _exact_top_k(
    f: Decoder,
    z: Tensor,
    k: int,
    columns: int,
    rewind: Callable[[], None],
    vector: bool,
    mode: str,
) -> Tensor:
    """The top ``k`` of the exact spectrum (and ``v_1``) from the reverse-mode Jacobian, in
    :func:`_krylov_chunk`'s layout: the fallback where ``jvp`` fails. Exact (never below the
    forward path's Ritz values), at ``n`` vector-Jacobian products per point; in sub-chunks whose
    ``n x m`` Jacobians take the memory of the chunk's ``n x columns`` Krylov images."""
    # spectrum.py imports this module (for singular_values(top_k=...)): import at call time
    from lightning_memwatch.functional.spectrum import gram_singular_values_and_top_vector

    def exact(chunk: Tensor) -> Tensor:
        rewind()
        outputs, jac = reverse_jacobian(f, chunk, mode, budget_bytes=DEFAULT_CHUNK_BYTES)
        _check_output_size(k, jac.shape[1])
        finite = finite_outputs(outputs)
        head = gram_singular_values_and_top_vector(jac)
        s, v = head[:, :k], head[:, min(jac.shape[1:]) :]
        return torch.where(finite[:, None], torch.cat([s, v], dim=-1) if vector else s, torch.nan)

    size = len(z) * columns * (z.element_size() + 8) // (z.shape[1] * z.element_size())
    return map_chunks(exact, z, max(1, size))


def _top_k(
    f: Decoder,
    z: Tensor,
    k: int,
    oversample: int,
    iterations: int,
    chunk_size: int | None,
    generator: torch.Generator | None,
    vector: bool,
) -> Tensor:
    """Checks, then :func:`_krylov_chunk` chunk by chunk (``(B, k)``, or ``(B, k + m)``)."""
    _check_latents(z)
    _check_chunk_size(chunk_size)
    dim = z.shape[1]
    _check_top_k(k, dim)
    check_int("oversample", oversample, minimum=0)
    check_int("iterations", iterations, minimum=0)
    z = as_plain_tensor(z)
    if z.shape[0] == 0:
        raise ValueError("Expected `z` to hold at least one latent point but got an empty batch")
    width = min(k + oversample, dim)
    start = start_block(dim, width, generator, z.device)
    columns = min(dim, width * (iterations + 1))

    def compute(chunk: Tensor) -> Tensor:
        attempts = fallback_attempts(
            lambda: _krylov_chunk(f, chunk, start, k, iterations, rewind, vector),
            lambda mode: _exact_top_k(f, chunk, k, columns, rewind, vector, mode),
        )
        return with_fallback(f, chunk, attempts)[0]

    with fixed_randomness(z.device) as rewind:
        size = chunk_size or top_k_chunk_size(f, z, columns)
        with differentiable_context():
            return map_chunks(compute, z, size)


def top_k_chunk_size(
    f: Decoder, z: Tensor, columns: int, *, budget_bytes: int = DEFAULT_CHUNK_BYTES
) -> int:
    """Points per chunk so that a chunk's Krylov images ``J K`` (``n x columns`` per point, in
    ``z``'s dtype and a float64 copy) and bases (``m x columns``, float64) take about
    ``budget_bytes``. Runs the decoder once on a single point to learn ``n``."""
    with differentiable_context():
        n = f(z[:1]).reshape(1, -1).shape[1]
    per_point = columns * (n * (z.element_size() + 8) + z.shape[1] * 8)
    return max(1, min(z.shape[0], budget_bytes // per_point))


def top_singular_values_and_vector(
    f: Decoder,
    z: Tensor,
    k: int,
    *,
    oversample: int = 8,
    iterations: int = 1,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` largest singular values of ``J = df/dz`` and its top right-singular vector.

    Randomized block Krylov on ``J^T J`` (Musco & Musco 2015 Alg. 2; Halko, Martinsson & Tropp
    2011 sec. 4), see the module docstring: ``J`` enters only through ``jvp`` and ``vjp`` (with
    respect to the latents), never as an ``n x m`` matrix. Every point uses the same
    orthonormalised Gaussian start block; with ``generator=None`` it is the same block at every
    call. Works under ``torch.no_grad()`` and ``torch.inference_mode()``, never writes a
    parameter's ``.grad``, and leaves the global RNG as it found it (a stochastic decoder sees
    the same draws in every pass, so all products are of one Jacobian).

    Accuracy: the values are Ritz values, never above the exact ones; see the module docstring
    for the measured errors (``5e-4`` relative with a 10x gap after ``k``; without one, up to
    30% low near ``s_k`` with the default ``iterations=1`` and 9% with ``iterations=2``).

    Args:
        f: any callable from a ``(B, m)`` latent batch to a ``(B, ...)`` output batch.
        z: latent points, ``(B, m)``.
        k: how many singular values, ``1 <= k <= min(n, m)``.
        oversample: extra columns ``p`` of the start block, ``l = min(k + p, m)``.
        iterations: Krylov steps ``q`` (each costs ``l`` vjps and ``l`` jvps).
        chunk_size: points per pass; ``None``: sized to :data:`DEFAULT_CHUNK_BYTES`
            (see :func:`top_k_chunk_size`).
        generator: draws the start block (``None``: seeded with :data:`DEFAULT_SEED`).

    Returns:
        ``(s, v_1)``: ``(B, k)`` float64 descending and ``(B, m)`` float64 unit vectors with
        the largest-magnitude entry positive; NaN rows where the output or ``J`` is not finite.

    Example::

        >>> import torch
        >>> A = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
        >>> s, v = top_singular_values_and_vector(lambda z: z @ A.T, torch.zeros(1, 3), 2)
        >>> s.round(decimals=6), v.abs().round(decimals=6)
        (tensor([[3., 2.]], dtype=torch.float64), tensor([[1., 0., 0.]], dtype=torch.float64))
    """
    out = _top_k(f, z, k, oversample, iterations, chunk_size, generator, vector=True)
    return out[:, :k], out[:, k:]


def top_singular_values(
    f: Decoder,
    z: Tensor,
    k: int,
    *,
    oversample: int = 8,
    iterations: int = 1,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The ``k`` largest singular values of ``J = df/dz`` at each point, ``(B, k)`` float64.

    :func:`top_singular_values_and_vector` without the vector (same arguments, same values).

    Example::

        >>> import torch
        >>> A = torch.diag(torch.tensor([5.0, 4.0, 1.0, 0.5]))
        >>> top_singular_values(lambda z: z @ A.T, torch.randn(2, 4), 2).round(decimals=6)
        tensor([[5., 4.],
                [5., 4.]], dtype=torch.float64)
    """
    return _top_k(f, z, k, oversample, iterations, chunk_size, generator, vector=False)
