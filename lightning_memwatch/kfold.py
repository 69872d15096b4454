"""Offline K-fold memorization score of every training sample (van den Burg and Williams, 2021).

The memorization score of a sample compares the model's likelihood of it when it was trained on
it with the likelihood when it was not: ``M_i = log P(x_i | D) - log P(x_i | D without x_i)``,
each ``P`` averaged over the randomness of training. Retraining without every sample is out of
reach, so the K-fold estimate splits the data into ``K`` folds ``I_1..I_K`` and trains one model
on ``D \\ I_f`` per fold; for a sample in fold ``f`` the ``K - 1`` models that trained on it are
"in", the one that held out its fold is "out"::

    M_i = log mean_{in models} p(x_i | model) - log mean_{out models} p(x_i | model)

Each ``log p(x_i | model)`` is the importance-sampled estimate of van den Burg & Williams
(2021), eq. 9
(:func:`~lightning_memwatch.functional.importance_log_likelihood`). The averages are of
probabilities (log-mean-exp of the log-likelihoods), over the in models of every repeat and the
out model of every repeat; ``repeats`` reshuffles the folds, as the authors' ``summarize.py``
(github.com/alan-turing-institute/memorization) pools runs. **High score = memorized**: the
model is much more likely to produce the sample once it has seen it (van den Burg's MNIST
scores: median about 4, the most memorized 80-200 nats).

Needs Lightning (it trains the models), so it lives outside :mod:`lightning_memwatch.functional`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from lightning_memwatch.callbacks.likelihood import LikelihoodMonitor
from lightning_memwatch.callbacks.machinery.adapters import parameter_dtype
from lightning_memwatch.callbacks.machinery.preflight import model_inputs
from lightning_memwatch.callbacks.machinery.probes import InputKey, gather_inputs
from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.likelihood import importance_log_likelihood

#: Trainer settings of every fold's model unless ``trainer_kwargs`` says otherwise.
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 10,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "limit_val_batches": 0,
    "num_sanity_val_steps": 0,
}
#: Samples per importance-sampling call when the fold models are evaluated (bounds memory).
EVAL_BATCH = 256


@dataclass
class KFoldMemorization:
    """Per-sample K-fold memorization scores and what they are made of.

    Attributes:
        scores: ``(n,)`` ``M_i = log_px_in - log_px_out`` (nats; high = memorized).
        log_px_in: ``(n,)`` log-mean-exp of ``log p(x_i)`` over the models trained on ``x_i``.
        log_px_out: ``(n,)`` log-mean-exp over the models that held ``x_i`` out.
        log_px: ``(repeats, k, n)`` every fold model's estimate of every sample.
        folds: ``(repeats, n)`` the fold of each sample in each repeat.
    """

    scores: Tensor
    log_px_in: Tensor
    log_px_out: Tensor
    log_px: Tensor
    folds: Tensor

    def most_memorized(self, count: int) -> Tensor:
        """Indices of the ``count`` highest scores, highest first (NaN scores last)."""
        order = torch.where(torch.isnan(self.scores), -torch.inf, self.scores)
        return order.argsort(descending=True)[:count]


def log_mean_exp(values: Tensor, mask: Tensor) -> Tensor:
    """``log mean exp`` over dim 0 of the finite ``values`` where ``mask``; NaN if none."""
    keep = mask & torch.isfinite(values)
    masked = torch.where(keep, values, -torch.inf)
    count = keep.sum(dim=0)
    out = torch.logsumexp(masked, dim=0) - count.clamp_min(1).log()
    return torch.where(count > 0, out, torch.nan)


def _fold_assignment(size: int, k: int, generator: torch.Generator) -> Tensor:
    """A random partition of ``range(size)`` into ``k`` folds of near-equal size: fold index
    per sample."""
    folds = torch.empty(size, dtype=torch.long)
    for fold, members in enumerate(torch.randperm(size, generator=generator).tensor_split(k)):
        folds[members] = fold
    return folds


def _model_inputs(
    module: pl.LightningModule, dataset: Dataset, monitor: LikelihoodMonitor
) -> Tensor:
    """Every sample's input as the module computes on it: ``preprocess`` (a module attribute)
    applied to the collated samples, cast to the decoder's parameter dtype."""
    preprocess = None
    if monitor.preprocess_name is not None:
        preprocess = monitor._attribute(module, monitor.preprocess_name, "preprocess")
    with torch.no_grad():
        x = gather_inputs(
            dataset, torch.arange(len(dataset)), monitor.input_key, preprocess=preprocess
        )
    dtype = parameter_dtype(monitor.decoder(module).fn, module)
    return model_inputs(x.detach(), dtype, "kfold_memorization_scores", "dataset")


def _estimate_all(
    module: pl.LightningModule,
    dataset: Dataset,
    monitor: LikelihoodMonitor,
    generator: torch.Generator,
) -> Tensor:
    module.eval()
    x = _model_inputs(module, dataset, monitor)
    encoder = monitor.encoder(module)  # the decoder takes latents of the encoder's shape
    with torch.no_grad():
        encoder(x[:1].to(module.device))
    monitor.latent_shape = encoder.latent_shape
    # "auto" reads the trained decoder's outputs as probabilities or logits, per fold model
    name = monitor.resolve_likelihood(module, x)
    posterior, log_likelihood = monitor.likelihood_callables(module, name)
    parts = []
    for block in x.split(EVAL_BATCH):
        parts.append(
            importance_log_likelihood(
                block.to(module.device),
                posterior,
                log_likelihood,
                num_samples=monitor.num_samples,
                generator=generator,
            ).cpu()
        )
    return torch.cat(parts)


def kfold_memorization_scores(
    build_module: Callable[[], pl.LightningModule],
    dataset: Dataset,
    *,
    k: int = 5,
    repeats: int = 1,
    encoder: str = "encoder",
    decoder: str = "decoder",
    likelihood: str = "auto",
    scale: float = 1.0,
    num_samples: int = 128,
    input_key: InputKey = 0,
    batch_size: int = 64,
    trainer_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    decoder_output: str | None = None,
    encoder_output: str | None = None,
    preprocess: str | None = None,
) -> KFoldMemorization:
    """Train ``repeats * k`` models on K-fold splits of ``dataset`` and score every sample.

    For each repeat the samples are shuffled into ``k`` folds; for each fold a fresh module from
    ``build_module()`` is trained with ``lightning.Trainer(**trainer_kwargs).fit`` on the other
    folds (``DataLoader(Subset(dataset, ...), batch_size, shuffle=True)``), after
    ``lightning.seed_everything`` with a seed derived from ``seed``, the repeat and the fold
    (so the whole computation is reproducible; it does set the global RNG). Then every sample's
    ``log p(x)`` under that model is estimated by importance sampling (van
    den Burg & Williams (2021), eq. 9) and the scores are formed as in the module docstring.

    Args:
        build_module: returns a new, untrained LightningModule (called ``repeats * k`` times).
        dataset: a map-style dataset of ``n`` samples.
        k: folds, ``2 <= k <= n`` (van den Burg: 10).
        repeats: independent reshuffles of the folds, pooled in the averages.
        encoder, decoder, likelihood, scale, num_samples: how to read ``log p(x)`` off a module,
            as for :class:`~lightning_memwatch.callbacks.LikelihoodMonitor`; ``"auto"``
            (default) reads each trained fold model's decoder outputs as Bernoulli
            probabilities or logits, whichever they look like on the dataset.
        input_key: picks the input out of a sample (tuple index, dict key, ``None``: the sample).
        decoder_output, encoder_output: which part of a decoder's / encoder's structured
            output to read, as for the monitors.
        preprocess: name of a module method that turns a collated batch of samples into the
            model's inputs, as for the monitors (applied with each fold model; the inputs are
            then cast to the decoder's parameter dtype).
        batch_size: training batch size.
        trainer_kwargs: ``lightning.Trainer`` arguments, over :data:`TRAINER_DEFAULTS`
            (``max_epochs=10``, no logger, checkpoints, progress bar or validation).
        seed: seeds the folds, the training and the importance samples.

    Returns:
        :class:`KFoldMemorization`.
    """
    if not callable(build_module):
        raise ValueError(
            f"Expected `build_module` to be a function returning a new LightningModule but got "
            f"{type(build_module).__name__}"
        )
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            f"Expected `dataset` to be a map-style dataset (with `__len__` and `__getitem__`) "
            f"but got {type(dataset).__name__}"
        )
    size = len(dataset)
    check_int("k", k, minimum=2)
    if k > size:
        raise ValueError(
            f"Expected `k` to be at most the dataset's size ({size}) but got {k}: pass fewer folds"
        )
    check_int("repeats", repeats)
    check_int("batch_size", batch_size)
    monitor = LikelihoodMonitor(
        decoder=decoder,
        encoder=encoder,
        likelihood=likelihood,
        scale=scale,
        num_samples=num_samples,
        input_key=input_key,
        seed=seed,
        decoder_output=decoder_output,
        encoder_output=encoder_output,
        preprocess=preprocess,
    )
    options = {**TRAINER_DEFAULTS, **(trainer_kwargs or {})}

    folds = torch.empty(repeats, size, dtype=torch.long)
    log_px = torch.empty(repeats, k, size, dtype=torch.float64)
    for repeat in range(repeats):
        folds[repeat] = _fold_assignment(size, k, torch.Generator().manual_seed(seed + repeat))
        for fold in range(k):
            run_seed = seed + 1009 * repeat + fold
            pl.seed_everything(run_seed, verbose=False)
            module = build_module()
            if not isinstance(module, pl.LightningModule):
                raise ValueError(
                    "Expected `build_module()` to return a LightningModule but got "
                    f"{type(module).__name__}"
                )
            train = torch.nonzero(folds[repeat] != fold).flatten().tolist()
            loader = DataLoader(Subset(dataset, train), batch_size=batch_size, shuffle=True)
            pl.Trainer(**options).fit(module, loader)
            generator = torch.Generator().manual_seed(run_seed)
            log_px[repeat, fold] = _estimate_all(module, dataset, monitor, generator)

    held_in = folds[:, None, :] != torch.arange(k)[None, :, None]  # (repeats, k, n)
    flat = log_px.reshape(repeats * k, size)
    log_in = log_mean_exp(flat, held_in.reshape(repeats * k, size))
    log_out = log_mean_exp(flat, ~held_in.reshape(repeats * k, size))
    return KFoldMemorization(log_in - log_out, log_in, log_out, log_px, folds)
