"""Which handwritten digits does a VAE memorize? Van den Burg's K-fold memorization score.

    python examples/kfold_memorization.py --out kfold_out          # about a minute on 2 CPU cores
    python examples/kfold_memorization.py --out kfold_out --fast   # a seconds-long smoke run

The 8 x 8 digits ship with scikit-learn (``sklearn.datasets.load_digits``), so nothing is
downloaded. A small Bernoulli VAE (van den Burg's MNIST model, scaled down) is trained K times,
each time without one fold of the digits; every digit's ``log p(x)`` under every model is
estimated by importance sampling (``papers/vandenburg_memorization_supp.txt`` eq. 9), and its
memorization score is the log-likelihood when its fold was trained on minus when it was held out
(:func:`lightning_memwatch.kfold_memorization_scores`). The most memorized digits are listed and
drawn, beside the least memorized, in ``<out>/kfold_memorization.png``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from lightning_memwatch import KFoldMemorization, kfold_memorization_scores


class DigitsVAE(L.LightningModule):
    """A VAE for 8 x 8 digits in [0, 1]: Gaussian ``q(z|x)``, Bernoulli decoder (logits)."""

    def __init__(self, latent_dim: int = 8, hidden: int = 128, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 64),
            nn.Unflatten(1, (1, 8, 8)),
        )

    def encoder(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, log_var)`` of ``q(z|x)``: what the likelihood estimate samples from."""
        mean, log_var = self.net(x).chunk(2, dim=1)
        return mean, log_var

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (x,) = batch
        mean, log_var = self.encoder(x)
        z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
        rec = nn.functional.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum()
        return (rec + kl) / len(x)  # negative ELBO per digit

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def digits(count: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """``count`` random digits, ``(count, 1, 8, 8)`` in [0, 1], and their labels."""
    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.images))[:count]
    images = torch.from_numpy(data.images[order].astype(np.float32) / 16.0).unsqueeze(1)
    return images, data.target[order]


def save_grid(
    path: Path, images: torch.Tensor, labels: np.ndarray, result: KFoldMemorization, count: int
) -> None:
    """The ``count`` most (top row) and least (bottom row) memorized digits with their scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {
        "most memorized": result.most_memorized(count),
        "least memorized": result.most_memorized(len(result.scores)).flip(0)[:count],
    }
    fig, axes = plt.subplots(2, count, figsize=(1.1 * count, 2.9), squeeze=False)
    for row, (title, indices) in enumerate(rows.items()):
        for col, ax in enumerate(axes[row]):
            ax.axis("off")
            if col < len(indices):
                i = int(indices[col])
                ax.imshow(images[i, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
                ax.set_title(f"{labels[i]}: {result.scores[i].item():.1f}", fontsize=8)
        axes[row][0].text(
            -0.6,
            0.5,
            title,
            transform=axes[row][0].transAxes,
            rotation=90,
            va="center",
            ha="center",
            fontsize=8,
        )
    fig.suptitle("K-fold memorization score (nats): label: score", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def score(args: argparse.Namespace, images: torch.Tensor) -> KFoldMemorization:
    """Train the fold models and score every digit."""
    return kfold_memorization_scores(
        DigitsVAE,
        TensorDataset(images),
        k=args.k,
        repeats=args.repeats,
        likelihood="bernoulli",
        num_samples=args.num_samples,
        batch_size=32,
        trainer_kwargs={"max_epochs": args.epochs, "accelerator": "cpu"},
    )


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("kfold_output"), help="output folder")
    parser.add_argument("--fast", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--n", type=int, default=200, help="digits")
    parser.add_argument("--k", type=int, default=4, help="folds")
    parser.add_argument("--repeats", type=int, default=1, help="reshuffles of the folds")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--num-samples", type=int, default=128, help="importance samples")
    parser.add_argument("--top", type=int, default=8, help="digits to list and draw")
    args = parser.parse_args(argv)
    if args.fast:
        args.n, args.k, args.epochs, args.num_samples = 40, 2, 2, 8

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one line per fold is noise
    images, labels = digits(args.n)
    threads = torch.get_num_threads()
    # models this small run fastest on one thread; on a busy 2-core machine two threads wait
    # on each other (measured 444 s instead of 20 s for the default run)
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        result = score(args, images)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start

    scores = result.scores.numpy()
    top = result.most_memorized(args.top).tolist()
    models, per_model = args.k * args.repeats, args.n * (args.k - 1) // args.k
    print(
        f"\n{models} Bernoulli VAEs, {args.epochs} epochs each on {per_model} of {args.n} digits, "
        f"{args.num_samples} importance samples: {seconds:.1f} s."
    )
    print(
        f"Memorization score (nats): median {np.nanmedian(scores):.2f}, "
        f"max {np.nanmax(scores):.2f}, positive for {np.mean(scores > 0):.0%} of the digits.\n"
    )
    print("| rank | index | label | score | log p(x) trained on | log p(x) held out |")
    print("|---:|---:|---:|---:|---:|---:|")
    for rank, i in enumerate(top, start=1):
        print(
            f"| {rank} | {i} | {labels[i]} | {scores[i]:.2f} | "
            f"{result.log_px_in[i].item():.2f} | {result.log_px_out[i].item():.2f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / "kfold_memorization.png"
    save_grid(figure, images, labels, result, args.top)
    print(f"\nMost and least memorized digits: {figure}")
    return {"result": result, "top": top, "labels": labels, "figure": figure, "seconds": seconds}


if __name__ == "__main__":
    main()
