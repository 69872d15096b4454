"""A DCGAN-style generator at a realistic shape (latent 100, 1 x 28 x 28 outputs), watched by
GeometryMonitor (top-k spectrum) and RecoveryMonitor.

    python examples/dcgan_digits.py          # fit with and without the monitors, then the table
    python examples/dcgan_digits.py --fast   # a seconds-long smoke run (the tests use it)

The generator follows Radford et al. 2016 (DCGAN): the latent ``z ~ N(0, I_100)`` enters as a
``100 x 1 x 1`` map, and transposed convolutions with BatchNorm and ReLU grow it to ``7 x 7``,
``14 x 14`` and a sigmoid ``1 x 28 x 28`` image; the discriminator is strided convolutions with
LeakyReLU. It trains on the 8 x 8 digits upsampled to 28 x 28, with manual optimization and no
``validation_step`` (as Lightning's GAN template), so the monitors measure at training-epoch
ends and draw the held-out probe from ``val_dataloader()``.

``GeometryMonitor(top_k=32)`` is explicit: ``"auto"`` switches to the top-k spectrum only from a
latent size of 512 on, and at m = 100 the exact spectrum costs 100 Jacobian-vector products per
point. The fit runs twice with the same seed, without and then with the monitors, so the printed
fit-time ratio is measured side by side. Outputs: the table on stdout, TensorBoard runs under
``outputs/dcgan_digits/`` unless ``--log-dir`` says.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_vae import quiet
from generator_report import (
    UpsampledDigits,
    measured_table,
    recovered_norms,
    timed_fit,
    typical_norms,
)

from lightning_memwatch import GeometryMonitor, RecoveryMonitor


class DCGANGenerator(nn.Sequential):
    """``(B, latent_dim)`` latents to ``(B, 1, 28, 28)`` images in [0, 1] (DCGAN, Radford et al.
    2016 sec. 3: transposed convolutions, BatchNorm, ReLU, no fully connected hidden layer)."""

    def __init__(self, latent_dim: int = 100, width: int = 64) -> None:
        super().__init__(
            nn.Unflatten(1, (latent_dim, 1, 1)),
            nn.ConvTranspose2d(latent_dim, 2 * width, 7, 1, 0, bias=False),  # 7 x 7
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),  # 14 x 14
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1),  # 28 x 28
            nn.Sigmoid(),
        )


class DCGANDiscriminator(nn.Sequential):
    """``(B, 1, 28, 28)`` images to ``(B, 1)`` logits: strided convolutions, LeakyReLU 0.2."""

    def __init__(self, width: int = 32) -> None:
        super().__init__(
            nn.Conv2d(1, width, 4, 2, 1),  # 14 x 14
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False),  # 7 x 7
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * width * 49, 1),
        )


class DigitsDCGAN(L.LightningModule):
    """DCGAN on 28 x 28 digits: non-saturating loss, one discriminator and one generator step per
    batch (manual optimization), Adam (lr 2e-4, betas 0.5, 0.999) as in Radford et al.

    Args:
        latent_dim: latent size ``m`` (DCGAN's 100).
        width: channels of the generator's last hidden layer (the first has twice as many).
        lr: Adam learning rate of both networks.
    """

    def __init__(self, latent_dim: int = 100, width: int = 64, lr: float = 2e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = DCGANGenerator(latent_dim, width)
        self.discriminator = DCGANDiscriminator(width // 2)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = batch[0]
        opt_g, opt_d = self.optimizers()
        softplus = nn.functional.softplus
        z = torch.randn(len(real), self.hparams.latent_dim, device=real.device)
        fake = self.generator(z)
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


def monitors(probe_size: int, every: int, top_k: int = 32) -> list[Any]:
    """The spectrum and density (both on the top ``k`` singular values) and the recovery of the
    generator, on the same probe and seed (the geometry measures at the latents the recovery
    found), budget off."""
    common = {"decoder": "generator", "probe_size": probe_size, "every_n_epochs": every}
    common["max_overhead"] = math.inf
    return [
        GeometryMonitor(**common, top_k=top_k),
        RecoveryMonitor(**common, steps=30, restarts=1),
    ]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", default="outputs/dcgan_digits")
    args = parser.parse_args(argv)
    # (training digits, epochs, probe size per split, measure every n epochs, generator width)
    n_train, epochs, probe, every, width = (64, 2, 4, 1, 16) if args.fast else (1400, 6, 16, 2, 64)

    def make_data() -> UpsampledDigits:
        return UpsampledDigits(28, n_train=n_train, n_val=256, batch_size=64, seed=args.seed)

    def make_model() -> DigitsDCGAN:
        return DigitsDCGAN(width=width)

    with quiet(1):
        _, without = timed_fit(make_model, make_data, epochs, [], args.seed)
        watchers = monitors(probe, every)
        logger = TensorBoardLogger(args.log_dir, name=f"dcgan_seed{args.seed}")
        trainer, with_ = timed_fit(make_model, make_data, epochs, watchers, args.seed, logger)
    values, table = measured_table(trainer.callback_metrics, watchers, with_, without)
    norms = recovered_norms(watchers[-1])
    low, high = typical_norms(100)
    values["latent_norm"] = float(norms.median())
    values["latent_norm_in_range"] = float(((norms >= low) & (norms <= high)).float().mean())
    print(
        f"\nDCGAN generator, latent 100 -> 1 x 28 x 28, width {width}, {n_train} digits, "
        f"{epochs} epochs, probe {probe} + {probe}, GeometryMonitor(top_k=32); last measurement"
    )
    print(table)
    print(
        f"| recovered latents: median norm (N(0, I_100) typical {low:.1f}-{high:.1f}); share in "
        f"range | {values['latent_norm']:.3g}; {values['latent_norm_in_range']:.2f} |"
    )
    print(
        "The spectrum monitor runs first and recovers the probe's latents into the store the "
        "recovery monitor shares: the recovery's seconds are in memwatch/spectrum/seconds."
    )
    return values


if __name__ == "__main__":
    main()
