"""What :class:`~lightning_memwatch.callbacks.LikelihoodMonitor` checks on its probe before it
measures: Bernoulli inputs in ``[0, 1]``, and whether the decoder's outputs are Bernoulli
probabilities or logits (van den Burg's MNIST likelihood, Table 1, takes either).

Each check raises a ``ValueError`` that names the monitor, the argument, what was found and the
fix, so that a misconfiguration fails when training starts, not with a wrong number or after
epoch 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_memwatch.callbacks.machinery.isolation import measurement_context
from lightning_memwatch.functional.decoder_likelihood import (
    finite_range,
    looks_like_probabilities,
)
from lightning_memwatch.functional.likelihood import (
    importance_estimate,
    posterior_from_encoder,
    sample_posterior,
)


class LikelihoodConfiguration(Protocol):
    """What :func:`resolve_likelihood` reads of a likelihood monitor (``LikelihoodMonitor``
    satisfies it; machinery does not import the monitor)."""

    likelihood: str
    seed: int
    encoder_name: str | None
    decoder_name: str
    _owner: str
    encoder: Callable[[pl.LightningModule], Any]
    decoder: Callable[[pl.LightningModule], Any]

    def likelihood_callables(
        self, pl_module: pl.LightningModule, likelihood: str | None = None
    ) -> tuple[Any, Any]: ...


#: The Bernoulli likelihoods: ``"auto"`` reads the decoder's outputs as probabilities or logits
#: from what they look like on the probe.
BERNOULLI = ("auto", "bernoulli", "bernoulli_probs")


def _span(values: Tensor) -> tuple[float, float]:
    found = finite_range(values.detach().double()) if values.numel() else None
    return found or (float("nan"), float("nan"))


def check_unit_inputs(owner: str, x: Tensor, what: str) -> None:
    """A ``ValueError`` unless the finite inputs of the probe ``x`` lie in ``[0, 1]``.

    ``owner`` names the monitor and its likelihood (``'LikelihoodMonitor(likelihood="auto")'``),
    ``what`` the probe (``"training"`` or ``"validation"``).
    """
    low, high = _span(x)
    if low < 0 or high > 1:
        raise ValueError(
            f"{owner} measures a Bernoulli likelihood, which needs inputs in [0, 1], but the "
            f"{what} probe's inputs lie in [{low:.4g}, {high:.4g}]: pass "
            '`likelihood="gaussian"` (and its `scale`) for real-valued inputs, or `preprocess=` '
            "the name of a module method that rescales a batch to [0, 1]"
        )


def bernoulli_reading(owner: str, likelihood: str, out: Tensor) -> str:
    """The Bernoulli likelihood that reads the decoder's outputs ``out`` on the training probe.

    ``"auto"``: ``"bernoulli_probs"`` when ``out`` looks like probabilities
    (:func:`~lightning_memwatch.functional.decoder_likelihood.looks_like_probabilities`), else
    ``"bernoulli"`` (logged at info level). ``"bernoulli"`` (logits): a ``ValueError`` when
    ``out`` looks like probabilities. ``"bernoulli_probs"``: a ``ValueError`` when an output lies
    outside ``[0, 1]``.
    """
    probs = looks_like_probabilities(out)
    low, high = _span(out)
    found = f"on the training probe they lie in [{low:.4g}, {high:.4g}]"
    if likelihood == "auto":
        kind = "bernoulli_probs" if probs else "bernoulli"
        rank_zero_info(
            f"{owner} reads the decoder's outputs as {'probabilities' if probs else 'logits'} "
            f"({found}): likelihood={kind!r}"
        )
        return kind
    if likelihood == "bernoulli" and probs:
        raise ValueError(
            f"{owner} reads the decoder's outputs as Bernoulli logits, but {found}, as "
            "probabilities do (a decoder that ends in a sigmoid): pass "
            '`likelihood="bernoulli_probs"` (or "auto"); probabilities read as logits give a '
            "wrong log p(x)"
        )
    if likelihood == "bernoulli_probs" and (low < 0 or high > 1):
        raise ValueError(
            f"{owner} reads the decoder's outputs as Bernoulli probabilities, but {found}, "
            'outside [0, 1]: pass `likelihood="bernoulli"` for a decoder that returns logits (or '
            '"auto")'
        )
    return likelihood


def configuration_error(owner: str, error: Exception, fix: str) -> Exception:
    """``error``, raised by a dry run of the measurement, as a ``ValueError`` that names the
    monitor and says what to check (``fix``); an out-of-memory error as it is."""
    if isinstance(error, torch.OutOfMemoryError):
        return error
    return ValueError(
        f"{owner} could not compute log p(x) on its probe "
        f"({type(error).__name__}: {error}). Check {fix}"
    )


def resolve_likelihood(
    monitor: LikelihoodConfiguration, pl_module: pl.LightningModule, x: Tensor
) -> str:
    """Check the configuration on the probe ``x`` and return the likelihood to measure with.

    Runs the posterior, the decoder and the likelihood on ``x`` with one importance sample
    (own generator, in the measurement context), so that a misconfiguration fails now and
    names the monitor; for a Bernoulli likelihood checks that ``x`` lies in ``[0, 1]`` and
    reads the decoder's outputs at the draws
    (:func:`bernoulli_reading`): ``"auto"``
    gives ``"bernoulli_probs"`` or ``"bernoulli"``. Other likelihoods are returned as they are.
    """
    name, owner = monitor.likelihood, monitor._owner
    fix = (
        f"`encoder={monitor.encoder_name!r}` (x -> a Distribution or (mean, log_var)), "
        f"`decoder={monitor.decoder_name!r}` ((B, m) latents alone -> outputs the size of x) "
        f"and `likelihood={name!r}`"
    )
    if name in BERNOULLI:
        check_unit_inputs(owner, x, "training")
    with measurement_context(pl_module, pl_module.device), torch.no_grad():
        x = x.to(pl_module.device)
        try:
            q = posterior_from_encoder(monitor.encoder(pl_module))(x)
            z = sample_posterior(q, 1, generator=torch.Generator().manual_seed(monitor.seed))
            out = monitor.decoder(pl_module)(z[0]) if name in BERNOULLI else None
            if name in BERNOULLI and not isinstance(out, Tensor):
                raise ValueError(f"the decoder returned {type(out).__name__}, not a tensor")
        except (TypeError, ValueError, RuntimeError) as error:
            raise configuration_error(owner, error, fix) from error
        if out is not None:
            name = bernoulli_reading(owner, name, out)
        try:
            importance_estimate(x, q, z, monitor.likelihood_callables(pl_module, name)[1])
        except (TypeError, ValueError, RuntimeError) as error:
            raise configuration_error(owner, error, fix) from error
    return name
