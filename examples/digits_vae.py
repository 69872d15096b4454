"""The demo's small VAE and its digits datamodule (shared by the examples, CLI and benchmark).

The 8 x 8 handwritten digits ship with scikit-learn (``sklearn.datasets.load_digits``, 1,797
images), so nothing is downloaded. Pixels are scaled from ``0..16`` to ``[0, 1]``.

The validation digits are the first ``n_val`` of one seeded permutation and the training digits
the next ``n_train``: two datamodules with the same ``n_val`` and ``seed`` share their validation
set whatever their ``n_train``, which is what lets the demo compare a model trained on 32 digits
with one trained on 1,400 against the same held-out digits.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

#: Number of digits in ``sklearn.datasets.load_digits``.
N_DIGITS = 1797


def load_digit_images() -> Tensor:
    """All 1,797 digits as ``(N, 1, 8, 8)`` float32 in ``[0, 1]``."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    return torch.from_numpy(images).unsqueeze(1)


def split_digits(n_train: int, n_val: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Disjoint ``(train, val)`` digits: validation first in a seeded permutation, then training.

    Raises:
        ValueError: when a size is not a positive integer or the two do not fit in 1,797 digits.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected `{name}` to be a positive integer but got {value!r}")
    if n_train + n_val > N_DIGITS:
        raise ValueError(
            f"Expected `n_train + n_val <= {N_DIGITS}` (the digits in sklearn's load_digits) but "
            f"got {n_train} + {n_val}: lower `n_train` or `n_val`"
        )
    images = load_digit_images()
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(images)))
    return images[order[n_val : n_val + n_train]], images[order[:n_val]]


class DigitsDataModule(L.LightningDataModule):
    """``n_train`` training and ``n_val`` validation digits (the same validation digits for every
    ``n_train`` at a given ``seed``); samples are 1-tuples ``(image,)``, images ``(1, 8, 8)``.

    Args:
        n_train: training digits.
        n_val: validation (held-out) digits.
        batch_size: training batch size.
        seed: seeds the split (not the training shuffle, which follows the global seed).
        passes: shuffled passes over the training digits per training epoch. On 32 digits one
            pass is 4 steps, and Lightning's fixed cost per epoch (hooks, a validation pass)
            outweighs them; several passes per epoch make the epoch the unit of work again. The
            dataset behind the loader is still the ``n_train`` digits (the monitors' probes are
            drawn from it), only the sampler repeats them.
    """

    def __init__(
        self,
        n_train: int = 1400,
        n_val: int = 256,
        batch_size: int = 64,
        seed: int = 0,
        passes: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("passes", passes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected `{name}` to be a positive integer but got {value!r}")
        self.save_hyperparameters()
        self.train_images, self.val_images = split_digits(n_train, n_val, seed)
        self.batch_size, self.passes = batch_size, passes

    def train_dataloader(self) -> DataLoader:
        dataset = TensorDataset(self.train_images)
        sampler = RandomSampler(dataset, num_samples=self.passes * len(dataset))
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.val_images), batch_size=256)


class DigitsVAE(L.LightningModule):
    """A small MLP VAE for ``(1, 8, 8)`` digits in ``[0, 1]`` (Kingma & Welling's ELBO).

    ``encode(x) -> (mu, logvar)`` of the Gaussian ``q(z|x)``; ``decoder(z)`` gives Bernoulli pixel
    means ``(B, 1, 8, 8)`` (sigmoid output). Loss per sample: summed pixel binary cross-entropy
    ``-log p(x|z)`` at one reparameterised draw ``z ~ q(z|x)``, plus
    ``beta * KL(q(z|x) || N(0, I))`` in closed form ``-1/2 sum(1 + logvar - mu^2 - exp(logvar))``;
    averaged over the batch.
    Logs ``train_loss`` and ``val_loss``: the same single-draw estimate, so the two are comparable;
    the validation draws come from a generator seeded per batch, so ``val_loss`` is a
    deterministic function of the weights and validation leaves the global RNG alone.

    Args:
        latent_dim: latent size ``m``.
        hidden: width of the single hidden layer of encoder and decoder.
        lr: Adam learning rate.
        beta: weight of the KL term (1 is the ELBO).
    """

    def __init__(
        self, latent_dim: int = 8, hidden: int = 256, lr: float = 4e-3, beta: float = 1.0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 64),
            nn.Sigmoid(),
            nn.Unflatten(1, (1, 8, 8)),
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)`` of ``q(z|x)``, each ``(B, latent_dim)``."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Negative ELBO per sample averaged over the batch (one reparameterised draw, from
        ``generator`` when given, else the global RNG)."""
        mu, logvar = self.encode(x)
        noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
        z = mu + noise * (0.5 * logvar).exp()
        means = self.decoder(z).clamp(1e-6, 1 - 1e-6)
        recon = nn.functional.binary_cross_entropy(means, x, reduction="none")
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)
        return (recon.flatten(1).sum(dim=1) + self.hparams.beta * kl).mean()

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        (x,) = batch
        loss = self.loss(x)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        (x,) = batch
        generator = torch.Generator().manual_seed(batch_idx)
        self.log("val_loss", self.loss(x, generator), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


@contextlib.contextmanager
def quiet(threads: int = 1) -> Iterator[None]:
    """``threads`` torch intra-op threads; Lightning's set-up info lines (``GPU available``, ...)
    and its small-data warnings off; everything restored on exit. Callbacks' messages (Lightning's
    ``EarlyStopping``, ``MemorizationEarlyStopping``) still print: only the loggers of
    ``rank_zero_info`` and of ``lightning.fabric`` are raised to WARNING.

    The model is tiny, so intra-op threads only add synchronisation: on a shared 2-core machine,
    two threads made each training step about 7x slower than one.
    """
    previous_threads = torch.get_num_threads()
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    torch.set_num_threads(threads)
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            yield
    finally:
        torch.set_num_threads(previous_threads)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def cpu_trainer(max_epochs: int, logger: Any, callbacks: Sequence[Any]) -> L.Trainer:
    """The examples' ``Trainer``: one CPU process, no checkpoints, progress bar, summary or
    sanity check (so that timings are of training and the callbacks only)."""
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
