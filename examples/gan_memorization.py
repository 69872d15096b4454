"""A GAN written the way Lightning's GAN template writes one, watched by memwatch.

    python examples/gan_memorization.py          # two runs, table at the end (35 s)
    python examples/gan_memorization.py --fast   # a seconds-long smoke run (the tests use it)

The module has a ``generator`` attribute, manual optimization and **no** ``validation_step``
(as in Lightning's template), so the monitors measure at the end of each training epoch and take
their held-out probe from the datamodule's ``val_dataloader()``. There is no encoder: the probe's
latents come from latent recovery, and ``GeometryMonitor`` measures at them moved into the
prior's typical set. Run **A** trains on 32 digits, run **B** on 1,400, the same 256 held-out
digits for both (``examples/digits_vae.py``'s datamodule). Printed: the last measurement of each
run and the recovered latents' norms against the ``N(0, I)`` prior's typical range.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from scipy import stats
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_vae import DigitsDataModule, cpu_trainer, quiet

from lightning_memwatch import GeometryMonitor, RecoveryMonitor

#: The keys of the table: what the README reads for GANs.
KEYS = (
    "memwatch/recovery/mre_gap",
    "memwatch/recovery/ks_pvalue",
    "memwatch/spectrum/log_volume/gap",
    "memwatch/density/dip/gap",
    "memwatch/density/dip/prior/gap",
    "memwatch/density/dip/volume/gap",
    "memwatch/density/decay/gap",
    "memwatch/density/decay/unreached/train",
    "memwatch/density/decay/unreached/val",
)


class DigitsGAN(L.LightningModule):
    """Generator ``z ~ N(0, I_m) -> 8 x 8`` digit, MLP discriminator, non-saturating loss, one
    discriminator and one generator step per batch (manual optimization)."""

    def __init__(self, latent_dim: int = 16, hidden: int = 128, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 64),
            nn.Sigmoid(),
            nn.Unflatten(1, (1, 8, 8)),
        )
        self.discriminator = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = batch[0]
        opt_g, opt_d = self.optimizers()
        z = torch.randn(len(real), self.hparams.latent_dim, device=real.device)
        fake = self.generator(z)
        softplus = nn.functional.softplus
        loss_d = softplus(-self.discriminator(real)).mean()
        loss_d = loss_d + softplus(self.discriminator(fake.detach())).mean()
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        loss_g = softplus(-self.discriminator(fake)).mean()
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.log_dict({"loss_d": loss_d, "loss_g": loss_g}, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> Any:
        betas = (0.5, 0.999)
        return (
            torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas),
        )


def monitors(probe_size: int, every: int) -> list[Any]:
    """Both monitors on the generator, budget off (a seconds-long run), the same probe and seed,
    so the geometry reads the latents the recovery found."""
    common = {"decoder": "generator", "probe_size": probe_size, "every_n_epochs": every}
    return [
        GeometryMonitor(**common, max_overhead=math.inf, radii=(0.25, 0.5)),
        RecoveryMonitor(**common, max_overhead=math.inf, steps=30, restarts=1),
    ]


def run(n_train: int, epochs: int, passes: int, probe: int, log_dir: str, seed: int) -> dict:
    L.seed_everything(seed, verbose=False)
    data = DigitsDataModule(n_train=n_train, n_val=256, batch_size=32, passes=passes, seed=seed)
    callbacks = monitors(probe, every=max(1, epochs // 8))
    logger = TensorBoardLogger(log_dir, name=f"gan_{n_train}")
    trainer = cpu_trainer(epochs, logger, callbacks)
    model = DigitsGAN()
    trainer.fit(model, datamodule=data)
    out = {k: float(v) for k, v in trainer.callback_metrics.items() if k in KEYS}
    store = callbacks[1].latent_store
    z = torch.cat([store.z[split] for split in ("train", "val")])
    out["latent_norm"] = float(z.norm(dim=1).median())
    out["measured"] = callbacks[0].measurements
    return out


def chi_range(m: int) -> tuple[float, float]:
    low, high = stats.chi.ppf([0.001, 0.999], df=m)
    return float(low), float(high)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", default=None)
    args = parser.parse_args(argv)
    if args.fast:
        plan = {"A_32": (32, 8, 4, 16), "B_1400": (1400, 2, 1, 16)}
    else:
        plan = {"A_32": (32, 80, 32, 32), "B_1400": (1400, 64, 1, 32)}
    results = {}
    with quiet(1), tempfile.TemporaryDirectory() as tmp:
        for name, (n_train, epochs, passes, probe) in plan.items():
            results[name] = run(n_train, epochs, passes, probe, args.log_dir or tmp, args.seed)
    low, high = chi_range(16)
    print(
        f"\nDigitsGAN (latent 16), last measurement; recovered latents' median norm "
        f"(latent_norm) against N(0, I_16)'s typical {low:.1f}-{high:.1f}"
    )
    print("| key | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for key in (*KEYS, "latent_norm", "measured"):
        row = " | ".join(f"{results[name].get(key, float('nan')):.3g}" for name in results)
        print(f"| {key} | {row} |")
    return results


if __name__ == "__main__":
    main()
