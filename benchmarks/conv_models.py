"""A small convolutional VAE on the sklearn digits upsampled to 28 x 28 (for the benchmarks).

The 8 x 8 digits of ``sklearn.datasets.load_digits`` (``examples/digits_vae.py``) are upsampled
bilinearly to ``1 x 28 x 28`` (``F.interpolate``; a convex combination of pixels, so they stay in
``[0, 1]``), the size of MNIST, which DCGAN-like decoders are written for. The model is the demo's
VAE (:class:`digits_vae.DigitsVAE`: the same loss, logging and optimizer) with a convolutional
encoder and a DCGAN-like transposed-convolution decoder ``latent -> 64 x 7 x 7 -> 32 x 14 x 14 ->
1 x 28 x 28`` (sigmoid: Bernoulli pixel means).
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from digits_vae import DigitsDataModule, DigitsVAE

#: Side of the upsampled digits (MNIST's).
SIDE = 28


def upsample(images: Tensor, side: int = SIDE) -> Tensor:
    """``(N, 1, 8, 8)`` digits to ``(N, 1, side, side)``, bilinear.

    Example::

        >>> big = upsample(torch.ones(2, 1, 8, 8))
        >>> big.shape, bool(torch.allclose(big, torch.ones(())))
        (torch.Size([2, 1, 28, 28]), True)
    """
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)


class UpsampledDigitsDataModule(DigitsDataModule):
    """:class:`digits_vae.DigitsDataModule` (same split, sampler and batches) with every image
    upsampled to ``1 x side x side`` (default 28)."""

    def __init__(
        self,
        n_train: int = 1400,
        n_val: int = 256,
        batch_size: int = 64,
        seed: int = 0,
        passes: int = 1,
        side: int = SIDE,
    ) -> None:
        super().__init__(n_train, n_val, batch_size, seed, passes)
        self.train_images = upsample(self.train_images, side)
        self.val_images = upsample(self.val_images, side)


class ConvVAE(DigitsVAE):
    """:class:`digits_vae.DigitsVAE` on ``1 x 28 x 28`` images: conv encoder, DCGAN-like decoder.

    ``encode(x) -> (mu, logvar)``; ``decoder(z)`` gives Bernoulli pixel means ``(B, 1, 28, 28)``.

    Args:
        latent_dim: latent size ``m``.
        lr: Adam learning rate.
        beta: weight of the KL term (1 is the ELBO).
    """

    def __init__(self, latent_dim: int = 32, lr: float = 2e-3, beta: float = 1.0) -> None:
        L.LightningModule.__init__(self)  # DigitsVAE's own layers are not built
        self.save_hyperparameters({"latent_dim": latent_dim, "lr": lr, "beta": beta})
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=4, stride=2, padding=1),  # 14 x 14
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2, padding=1),  # 7 x 7
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 64 * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, kernel_size=4, stride=2, padding=1),  # 14 x 14
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, kernel_size=4, stride=2, padding=1),  # 28 x 28
            nn.Sigmoid(),
        )


class ConvAutoencoder(L.LightningModule):
    """An ordinary conv autoencoder on ``1 x 16 x 16`` digits, as a newcomer writes one: an
    ``encoder`` and a ``decoder`` submodule, mean squared error, Adam.

    ``encoder(x)`` gives ``(B, latent_dim)`` latents (``1 x 16 x 16 -> 16 x 8 x 8 -> 32 x 4 x 4
    -> latent``); ``decoder(z)`` gives ``(B, 1, 16, 16)`` images in ``[0, 1]`` (sigmoid). Logs
    ``train_loss`` and ``val_loss``.

    Args:
        latent_dim: latent size ``m``.
        lr: Adam learning rate.
    """

    def __init__(self, latent_dim: int = 8, lr: float = 2e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=4, stride=2, padding=1),  # 8 x 8
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=4, stride=2, padding=1),  # 4 x 4
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 32 * 4 * 4),
            nn.ReLU(),
            nn.Unflatten(1, (32, 4, 4)),
            nn.ConvTranspose2d(32, 16, kernel_size=4, stride=2, padding=1),  # 8 x 8
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, kernel_size=4, stride=2, padding=1),  # 16 x 16
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        (x,) = batch
        loss = F.mse_loss(self(x), x)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        (x,) = batch
        self.log("val_loss", F.mse_loss(self(x), x), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


if __name__ == "__main__":  # a shape check
    model = ConvVAE(latent_dim=100)
    x = UpsampledDigitsDataModule(n_train=32, n_val=32).train_images[:4]
    mu, logvar = model.encode(x)
    loss = float(model.loss(x).detach())
    print(tuple(x.shape), tuple(mu.shape), tuple(model.decoder(mu).shape), loss)
