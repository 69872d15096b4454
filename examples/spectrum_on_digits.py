"""Train a small autoencoder on real digits, then read the spectrum of its decoder's Jacobian.

    python examples/spectrum_on_digits.py          # about 10 s on 2 CPU cores
    python examples/spectrum_on_digits.py --fast   # a seconds-long smoke run

The 8 x 8 handwritten digits ship with scikit-learn (``sklearn.datasets.load_digits``), so
nothing is downloaded. A Lightning autoencoder is trained on a few training digits; then, at the
latents of those training digits and of held-out digits, the decoder's Jacobian spectrum gives
the geometric descriptors (Feiszli (2017), Humayun et al. (2024), Ramirez et al. (poster)):
intrinsic dimension, local scaling psi, local rank nu and log condition, printed for both sets.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memwatch.functional import (
    intrinsic_dim,
    local_rank,
    local_scaling,
    log_condition,
    singular_values,
)


class DigitsAutoencoder(L.LightningModule):
    """An MLP autoencoder for 8 x 8 digits scaled to [0, 1]."""

    def __init__(self, latent_dim: int = 8, hidden: int = 128, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 64),
            nn.Sigmoid(),
            nn.Unflatten(1, (1, 8, 8)),
        )

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (x,) = batch
        loss = nn.functional.mse_loss(self.decoder(self.encoder(x)), x)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def digits_split(n_train: int, n_heldout: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint training and held-out digits, ``(N, 1, 8, 8)`` in [0, 1]."""
    images = load_digits().images.astype(np.float32) / 16.0
    order = np.random.default_rng(seed).permutation(len(images))
    train = torch.from_numpy(images[order[:n_train]]).unsqueeze(1)
    heldout = torch.from_numpy(images[order[n_train : n_train + n_heldout]]).unsqueeze(1)
    return train, heldout


def describe(model: DigitsAutoencoder, x: torch.Tensor) -> dict[str, float]:
    """Mean spectrum descriptors of the decoder at the encoder's latents of ``x``."""
    model.eval()
    with torch.no_grad():
        z = model.encoder(x)
    s = singular_values(model.decoder, z)
    return {
        "intrinsic_dim": intrinsic_dim(s).double().mean().item(),
        "log_volume (psi)": local_scaling(s).mean().item(),
        "local_rank (nu)": local_rank(s).mean().item(),
        "log_condition": log_condition(s).mean().item(),
        "s_1": s[:, 0].mean().item(),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--n-train", type=int, default=64, help="training digits")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    epochs = 5 if args.fast else args.epochs
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # a tiny model: more threads only wait on each other
    try:
        return _run(args, epochs)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, epochs: int) -> dict[str, dict[str, float]]:
    """Train, measure both sets, print the table; the descriptors' means per set."""
    L.seed_everything(0, verbose=False)
    train, heldout = digits_split(args.n_train, n_heldout=256)
    model = DigitsAutoencoder()
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    start = time.perf_counter()
    trainer.fit(model, DataLoader(TensorDataset(train), batch_size=32, shuffle=True))
    trained = time.perf_counter() - start

    start = time.perf_counter()
    results = {"train": describe(model, train), "held-out": describe(model, heldout)}
    measured = time.perf_counter() - start

    print(
        f"\nAutoencoder (latent 8) trained {epochs} epochs on {len(train)} digits in "
        f"{trained:.1f} s; spectra of {len(train) + len(heldout)} points in {measured:.2f} s.\n"
    )
    print("| descriptor | train | held-out | gap (train - held-out) |")
    print("|---|---:|---:|---:|")
    for key in results["train"]:
        tr, ho = results["train"][key], results["held-out"][key]
        print(f"| {key} | {tr:.3f} | {ho:.3f} | {tr - ho:+.3f} |")
    return results


if __name__ == "__main__":
    main()
