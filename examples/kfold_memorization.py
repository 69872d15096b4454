"""Which handwritten digits does a VAE memorize? Van den Burg's K-fold memorization score.

    python examples/kfold_memorization.py          # about a minute on 2 CPU cores
    python examples/kfold_memorization.py --fast   # a seconds-long smoke run

The 8 x 8 digits ship with scikit-learn (``sklearn.datasets.load_digits``), so nothing is
downloaded. The demo's Bernoulli VAE (``digits_vae.DigitsVAE``, van den Burg's MNIST model scaled
down) is trained K times, each time without one fold of the digits; every digit's ``log p(x)``
under every model is estimated by importance sampling (van den Burg & Williams (2021),
supplement, eq. 9), and its memorization score is the log-likelihood when its fold was trained on
minus when it was held out (:func:`lightning_memwatch.kfold_memorization_scores`). The most
memorized digits are listed and drawn, beside the least memorized, in
``<out>/kfold_memorization.png`` (``--out``, default ``outputs/kfold/``, in the gitignored
``outputs/``).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_vae import DigitsVAE, quiet

from lightning_memwatch import KFoldMemorization, kfold_memorization_scores


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
        functools.partial(DigitsVAE, hidden=128, lr=3e-3),  # the demo's VAE, a smaller layer
        TensorDataset(images),
        k=args.k,
        repeats=args.repeats,
        encoder="encode",
        likelihood="bernoulli_probs",  # its decoder ends in a sigmoid
        num_samples=args.num_samples,
        batch_size=32,
        trainer_kwargs={"max_epochs": args.epochs, "accelerator": "cpu"},
    )


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/kfold"), help="output folder")
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

    images, labels = digits(args.n)
    start = time.perf_counter()
    # one thread (two wait on each other on a busy 2-core machine: 444 s instead of 20 s for
    # the default run) and no Lightning line per fold
    with quiet():
        result = score(args, images)
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
