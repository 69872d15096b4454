"""The decoder of a latent diffusion model's autoencoder at small scale: a spatial latent
``4 x 8 x 8`` (256 dimensions) decoded to ``1 x 32 x 32`` digits, watched by GeometryMonitor
(top-k spectrum) and RecoveryMonitor (the density family opt-in: ``--density``).

    python examples/latent_decoder.py          # fit with and without the monitors, then the table
    python examples/latent_decoder.py --fast   # a seconds-long smoke run (the tests use it)

The autoencoder follows the shape of Rombach et al. 2022's KL-regularised first stage (LDM sec. 3,
appendix G): a convolutional encoder downsamples twice to a 4-channel latent map and outputs its
mean and log-variance; the decoder is a 3 x 3 convolution into 64 channels, residual blocks
(GroupNorm, SiLU, 3 x 3 convolutions) and two nearest-neighbour upsamplings, to a sigmoid image.
Loss: summed squared error plus ``kl_weight`` times the KL of ``q(z|x)`` to ``N(0, I)`` (LDM
weighs the KL lightly so the latent keeps detail; ``kl_weight=1e-3`` here). Digits upsampled
to 32 x 32, a ``validation_step`` as usual.

The monitors attach to the module's own methods, ``encoder="encode"`` (a diagonal Gaussian over
``(B, 4, 8, 8)`` maps) and ``decoder="decoder"`` (which takes the maps): when training starts
they record the latent shape ``(4, 8, 8)`` from the encoder's output and measure through the
flat view (``m = 256``), reshaping flat latents before the decoder is called; no glue method is
needed. The fit runs twice with the same seed, without and with the monitors. Outputs under
``outputs/latent_decoder/``.
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
from torch import Tensor, nn
from torch.distributions import Independent, Normal

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_vae import quiet
from generator_report import UpsampledDigits, measured_table, timed_fit

from lightning_memwatch import GeometryMonitor, RecoveryMonitor

#: The latent map's shape (channels, height, width): ``m = 4 * 8 * 8 = 256``.
LATENT = (4, 8, 8)


class ResBlock(nn.Module):
    """``x + conv(silu(norm(conv(silu(norm(x))))))``, 3 x 3 convolutions, GroupNorm of 8 groups
    (the residual block of LDM's autoencoder)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def up(channels: int, out: int) -> nn.Sequential:
    """Nearest-neighbour upsampling by 2, then a 3 x 3 convolution (LDM's ``Upsample``)."""
    return nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(channels, out, 3, padding=1))


class LatentDecoder(nn.Sequential):
    """``(B, 4, 8, 8)`` latent maps to ``(B, 1, 32, 32)`` images in [0, 1]."""

    def __init__(self, width: int = 64) -> None:
        super().__init__(
            nn.Conv2d(LATENT[0], width, 3, padding=1),
            ResBlock(width),
            up(width, width),  # 16 x 16
            ResBlock(width),
            up(width, width // 2),  # 32 x 32
            ResBlock(width // 2),
            nn.GroupNorm(8, width // 2),
            nn.SiLU(),
            nn.Conv2d(width // 2, 1, 3, padding=1),
            nn.Sigmoid(),
        )


class LatentAutoencoder(L.LightningModule):
    """KL-regularised autoencoder with a ``4 x 8 x 8`` latent map (module docstring).

    Args:
        width: channels of the decoder's first stage (the encoder uses half).
        kl_weight: weight of ``KL(q(z|x) || N(0, I))`` against the summed squared error.
        lr: Adam learning rate.
    """

    def __init__(self, width: int = 64, kl_weight: float = 1e-3, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        half = width // 2
        self.encoder = nn.Sequential(
            nn.Conv2d(1, half, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(half, half, 3, stride=2, padding=1),  # 16 x 16
            nn.SiLU(),
            nn.Conv2d(half, width, 3, stride=2, padding=1),  # 8 x 8
            nn.SiLU(),
            nn.Conv2d(width, 2 * LATENT[0], 1),  # mean and log-variance maps
        )
        self.decoder = LatentDecoder(width)

    def encode(self, x: Tensor) -> Independent:
        """``q(z|x)``: a diagonal Gaussian over ``(B, 4, 8, 8)`` latent maps."""
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return Independent(Normal(mean, (0.5 * log_var.clamp(-20, 10)).exp()), 3)

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        q = self.encode(x)
        noise = torch.randn(q.mean.shape, generator=generator, dtype=x.dtype).to(x.device)
        z = q.mean + q.stddev * noise
        recon = (self.decoder(z) - x).square().flatten(1).sum(1)
        var = q.variance
        kl = 0.5 * (q.mean.square() + var - var.log() - 1).flatten(1).sum(1)
        return (recon + self.hparams.kl_weight * kl).mean()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss(batch[0])
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(batch_idx)
        self.log("val_loss", self.loss(batch[0], generator), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def monitors(probe_size: int, every: int, top_k: int = 32, density: bool = False) -> list[Any]:
    """Spectrum (top ``k``) and recovery (30 L-BFGS steps refining the encoder's latent) on the
    module's map-valued ``decoder`` and ``encode`` as they are, same probe and seed, budget
    off; with ``density``, the density family too (on the same top ``k``; opt-in, as it is
    most of the cost)."""
    common = {"decoder": "decoder", "encoder": "encode", "probe_size": probe_size}
    common.update(every_n_epochs=every, max_overhead=math.inf)
    families = ("spectrum", "density") if density else ("spectrum",)
    return [
        GeometryMonitor(**common, families=families, top_k=top_k),
        RecoveryMonitor(**common, steps=30, restarts=1),
    ]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--density", action="store_true", help="the density family too (slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", default="outputs/latent_decoder")
    args = parser.parse_args(argv)
    # (training digits, epochs, probe size per split, measure every n epochs, decoder width)
    n_train, epochs, probe, every, width = (64, 2, 4, 1, 16) if args.fast else (1400, 6, 16, 3, 32)

    def make_data() -> UpsampledDigits:
        return UpsampledDigits(32, n_train=n_train, n_val=256, batch_size=64, seed=args.seed)

    def make_model() -> LatentAutoencoder:
        return LatentAutoencoder(width=width)

    with quiet(1):
        watchers = monitors(probe, every, density=args.density)
        _, without = timed_fit(make_model, make_data, epochs, [], args.seed)
        logger = TensorBoardLogger(args.log_dir, name=f"latent_decoder_seed{args.seed}")
        trainer, with_ = timed_fit(make_model, make_data, epochs, watchers, args.seed, logger)
    values, table = measured_table(trainer.callback_metrics, watchers, with_, without)
    print(
        f"\nLatent decoder, latent {' x '.join(map(str, watchers[0].latent_shape))} = "
        f"{watchers[0].latent_dim} (recorded from the encoder) -> 1 x 32 x 32, width {width}, "
        f"{n_train} digits, {epochs} epochs, probe {probe} + {probe}, spectrum top_k=32; last "
        "measurement"
    )
    print(table)
    return values


if __name__ == "__main__":
    main()
