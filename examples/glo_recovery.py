"""GLO-N on real digits: latent recovery tells the memorizing generator from the generalizing one.

    python examples/glo_recovery.py          # about a minute on 2 CPU cores
    python examples/glo_recovery.py --fast   # a seconds-long smoke run

Generative Latent Optimization (GLO, Webster et al. (2019), sec. 3.1, eq. 2; Bojanowski
et al. (2018)) trains a decoder ``G`` jointly with one latent ``z_i`` per training image::

    min_{G, z_1..z_N} sum_i ||G(z_i) - x_i||^2,        z_i on the unit sphere

(Webster et al.'s footnote 1 keeps its ``z_i ~ N(0, I)`` fixed; here they are learned, as in
Bojanowski's GLO). The latents are an ``nn.Embedding`` and the decoder first normalises its input,
``G(z) = g(z / ||z||)``, so that the latent space is the sphere (Bojanowski's projection) and
every ``N(0, I)`` start of ``recover_latents`` is a uniform point on it. The same GLO is trained,
with a Lightning ``Trainer`` and the same number of optimizer steps, on the first N of a fixed
shuffle of the 8 x 8 ``sklearn.datasets.load_digits`` images, N in {16, 64, 256, 1024}; a fixed
set of digits outside every training set is the validation set. For each N the latents of a
train probe and of a validation probe are recovered by ``recover_latents`` (Webster et al. (2019),
eq. NN_G, L-BFGS from prior restarts, the same procedure for both probes, never the trained
latents), and ``mre_gap`` (eq. 5) and ``ks_pvalue`` (sec. 3.3) compare the two error samples:
Webster et al. (2019), table 1 (GLO-128 ... GLO-26000) has the gap falling as N grows.
"""

from __future__ import annotations

import argparse
import logging
import time

import lightning as L
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from lightning_memwatch.functional import ks_pvalue, mre_gap, recover_latents

SIZES = (16, 64, 256, 1024)
#: Digits held out of every training set (1797 - 256 = 1541 >= 1024 remain for training).
N_VAL = 256


class SphereDecoder(nn.Module):
    """``G(z) = g(z / ||z||)``: an MLP from the unit sphere of ``R^m`` to 8 x 8 images in [0, 1]."""

    def __init__(self, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 64),
            nn.Sigmoid(),
            nn.Unflatten(1, (1, 8, 8)),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(nn.functional.normalize(z, dim=1))


class GLO(L.LightningModule):
    """Per-sample latents (``nn.Embedding``, kept on the unit sphere) and a decoder, trained jointly
    on the squared error of Webster et al. (2019), eq. 2; batches are ``(index, image)`` pairs."""

    def __init__(
        self,
        n_samples: int,
        latent_dim: int = 16,
        hidden: int = 128,
        lr: float = 3e-3,
        latent_lr: float = 1e-2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.latents = nn.Embedding(n_samples, latent_dim)
        # z_i ~ N(0, I) projected to the sphere, as in Webster et al. (2019), sec. 3.1
        with torch.no_grad():
            self.latents.weight.copy_(nn.functional.normalize(self.latents.weight, dim=1))
        self.decoder = SphereDecoder(latent_dim, hidden)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        index, x = batch
        return nn.functional.mse_loss(self.decoder(self.latents(index)), x)

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        with torch.no_grad():  # Bojanowski's projection back onto the sphere after each step
            self.latents.weight.copy_(nn.functional.normalize(self.latents.weight, dim=1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            [
                {"params": self.decoder.parameters(), "lr": self.hparams.lr},
                {"params": self.latents.parameters(), "lr": self.hparams.latent_lr},
            ]
        )


def digits_pool(n_val: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A fixed shuffle of the digits, ``(1797 - n_val, 1, 8, 8)`` for training sets (GLO-N takes
    the first N) and the last ``n_val`` as the validation set, in [0, 1]."""
    images = load_digits().images.astype(np.float32) / 16.0
    order = np.random.default_rng(seed).permutation(len(images))
    shuffled = torch.from_numpy(images[order]).unsqueeze(1)
    return shuffled[:-n_val], shuffled[-n_val:]


def train_glo(train: Tensor, steps: int, batch_size: int, seed: int) -> GLO:
    """GLO on ``train`` for exactly ``steps`` optimizer steps (one epoch of sampled batches)."""
    L.seed_everything(seed, verbose=False)
    model = GLO(len(train))
    batch_size = min(batch_size, len(train))
    data = TensorDataset(torch.arange(len(train)), train)
    sampler = RandomSampler(data, replacement=True, num_samples=steps * batch_size)
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, DataLoader(data, batch_size=batch_size, sampler=sampler))
    return model


def recovery_errors(
    model: GLO, x: Tensor, steps: int, restarts: int, seed: int
) -> tuple[Tensor, Tensor]:
    """Webster eq. NN_G errors of ``x`` under the decoder, from ``restarts`` prior starts."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    _, errors = recover_latents(
        model.decoder,
        x,
        latent_dim=model.hparams.latent_dim,
        steps=steps,
        restarts=restarts,
        generator=generator,
    )
    return errors


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--seed", type=int, default=0, help="data shuffle, init and restarts")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps per GLO-N")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--probe", type=int, default=128, help="train / validation probe size")
    parser.add_argument("--lbfgs-steps", type=int, default=50, help="L-BFGS steps per start")
    parser.add_argument("--restarts", type=int, default=4, help="prior starts per target")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)"
    )
    args = parser.parse_args(argv)
    if args.fast:
        args.steps, args.probe, args.lbfgs_steps, args.restarts = 300, 32, 20, 2

    threads, log = torch.get_num_threads(), logging.getLogger("lightning.pytorch")
    level = log.level
    torch.set_num_threads(args.threads)
    log.setLevel(logging.WARNING)  # no accelerator / max_steps chatter for each of the 4 fits
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)
        log.setLevel(level)


def _run(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    start = time.perf_counter()
    pool, val = digits_pool(n_val=N_VAL, seed=args.seed)
    val = val[: args.probe]
    results: dict[int, dict[str, float]] = {}
    seconds = {"train": 0.0, "recover": 0.0}
    for n in SIZES:
        train = pool[:n]
        tic = time.perf_counter()
        model = train_glo(train, args.steps, args.batch_size, seed=args.seed)
        seconds["train"] += time.perf_counter() - tic
        tic = time.perf_counter()
        probe = train[:: max(1, n // args.probe)][: args.probe]
        e_train, e_val = (
            recovery_errors(model, x, args.lbfgs_steps, args.restarts, seed=args.seed)
            for x in (probe, val)
        )
        seconds["recover"] += time.perf_counter() - tic
        results[n] = {
            "mre_train": float(np.median(e_train.numpy())),  # Webster et al. (2019), eq. 4
            "mre_val": float(np.median(e_val.numpy())),
            "mre_gap": mre_gap(e_train, e_val),
            "ks_pvalue": ks_pvalue(e_train, e_val),
        }
    elapsed = time.perf_counter() - start

    print(
        f"\nGLO-N (latent 16 on the sphere, MLP decoder) trained {args.steps} steps per N; latents "
        f"of {args.probe}-digit train / validation probes recovered by L-BFGS "
        f"({args.restarts} restarts x {args.lbfgs_steps} steps); {elapsed:.1f} s in all (training "
        f"{seconds['train']:.1f} s, recovery {seconds['recover']:.1f} s).\n"
    )
    print("| N | MRE train | MRE val | MRE-gap | KS p |")
    print("|---:|---:|---:|---:|---:|")
    for n, row in results.items():
        print(
            f"| {n} | {row['mre_train']:.2e} | {row['mre_val']:.2e} | {row['mre_gap']:.3f} | "
            f"{row['ks_pvalue']:.2e} |"
        )
    return results


if __name__ == "__main__":
    main()
