"""Small diffusion models for the DiffusionMonitor tests: a diffusers UNet with its scheduler,
a model of one's own (a conv denoiser and an ``alphas_cumprod`` buffer) and a stand-in with
denoising_diffusion_pytorch's attribute layout. Module-level, so ``ddp_spawn`` can pickle them.

Training draws its noise and timesteps from a generator seeded by the global step, so that a run
resumed from a checkpoint trains as the uninterrupted one does (Lightning does not checkpoint the
global RNG); ``global_rng=True`` draws them from the global RNG instead, which a monitor must
leave untouched.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from tests.conftest import digits_tensors


def linear_alphas_cumprod(steps: int = 100) -> torch.Tensor:
    """``abar_t`` of DDPM's linear schedule (Ho et al. 2020), rescaled to ``steps`` steps."""
    betas = torch.linspace(1e-4 * 1000 / steps, 0.02 * 1000 / steps, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


class ConvDenoiser(nn.Module):
    """``net(x_t, t)``: a small conv net with a learned timestep embedding, no normalisation."""

    def __init__(self, steps: int = 100, width: int = 16, classes: int = 0) -> None:
        super().__init__()
        self.time = nn.Embedding(steps, width)
        self.label = nn.Embedding(classes, width) if classes else None
        self.inp = nn.Conv2d(1, width, 3, padding=1)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels=None) -> torch.Tensor:
        emb = self.time(t)
        if self.label is not None:
            emb = emb + self.label(class_labels)
        h = torch.tanh(self.inp(x) + emb[:, :, None, None])
        return self.out(torch.tanh(self.mid(h)))


class DiffusionModule(L.LightningModule):
    """An epsilon-predicting DDPM on 8 x 8 digits in [-1, 1]; ``kind`` picks the denoiser:
    ``"diffusers"`` (UNet2DModel + DDPMScheduler, as ``unet`` / ``noise_scheduler``; attention in
    the mid block with ``attention=True``) or ``"own"`` (``net`` + an ``alphas_cumprod`` buffer)."""

    def __init__(
        self,
        kind: str = "own",
        steps: int = 100,
        prediction: str = "epsilon",
        attention: bool = False,
        global_rng: bool = False,
        classes: int = 0,
        lr: float = 2e-3,
    ) -> None:
        super().__init__()
        self.kind, self.prediction, self.global_rng, self.lr = kind, prediction, global_rng, lr
        self.steps = steps
        if kind == "diffusers":
            from diffusers import DDPMScheduler, UNet2DModel

            self.unet = UNet2DModel(
                sample_size=8,
                in_channels=1,
                out_channels=1,
                layers_per_block=1,
                block_out_channels=(8, 16),
                down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=4,
                add_attention=attention,
                attention_head_dim=4,
                num_class_embeds=classes or None,
            )
            self.noise_scheduler = DDPMScheduler(
                num_train_timesteps=steps, prediction_type=prediction
            )
        else:
            self.net = ConvDenoiser(steps, classes=classes)
            self.register_buffer("alphas_cumprod", linear_alphas_cumprod(steps))
        self.losses: list[float] = []

    def abar(self) -> torch.Tensor:
        if self.kind == "diffusers":
            return self.noise_scheduler.alphas_cumprod.to(self.device)
        return self.alphas_cumprod

    def predict(self, x_t, t, labels=None):
        kwargs = {} if labels is None else {"class_labels": labels}
        if self.kind == "diffusers":
            return self.unet(x_t, t, **kwargs).sample
        return self.net(x_t, t, **kwargs)

    def training_step(self, batch, batch_idx):
        x0 = batch[0] * 2 - 1
        labels = batch[1] if len(batch) > 1 else None
        generator = None
        if not self.global_rng:
            generator = torch.Generator().manual_seed(1000 + self.global_step)
        eps = torch.randn(x0.shape, generator=generator).to(x0)
        t = torch.randint(0, self.steps, (len(x0),), generator=generator).to(self.device)
        abar = self.abar()[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        target = eps if self.prediction == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
        loss = (self.predict(x_t, t, labels) - target).square().mean()
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class UnetStandIn(nn.Module):
    """denoising_diffusion_pytorch's ``Unet`` as ``GaussianDiffusion`` uses it:
    ``model(x, time, x_self_cond=None)``, with ``channels``, ``out_dim``, ``self_condition``."""

    def __init__(self, steps: int = 100, self_condition: bool = False) -> None:
        super().__init__()
        self.channels, self.out_dim, self.self_condition = 1, 1, self_condition
        self.net = ConvDenoiser(steps)
        self.cond = nn.Conv2d(1, 1, 1) if self_condition else None

    def forward(self, x, time, x_self_cond=None):
        if self.self_condition:  # the Unet concatenates zeros when not given (here: adds them)
            x = x + self.cond(x_self_cond if x_self_cond is not None else torch.zeros_like(x))
        return self.net(x, time)


def normalize_to_neg_one_to_one(img):
    return img * 2 - 1


def unnormalize_to_zero_to_one(t):
    return (t + 1) * 0.5


def identity(t, *args, **kwargs):
    return t


class GaussianDiffusionStandIn(nn.Module):
    """denoising_diffusion_pytorch's ``GaussianDiffusion`` attribute layout (read from its
    source, version 2.x): ``model``, an ``alphas_cumprod`` float32 buffer, ``num_timesteps``,
    ``objective`` in ``{"pred_noise", "pred_x0", "pred_v"}``, ``normalize`` / ``unnormalize``
    (``auto_normalize``: ``[0, 1] <-> [-1, 1]``, else identity), ``self_condition``; its
    ``forward(img)`` normalizes the images and returns the loss at random timesteps."""

    def __init__(
        self,
        model: UnetStandIn,
        *,
        timesteps: int = 100,
        objective: str = "pred_noise",
        auto_normalize: bool = True,
    ) -> None:
        super().__init__()
        self.model, self.objective = model, objective
        self.self_condition = model.self_condition
        self.num_timesteps = timesteps
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod(timesteps))
        self.normalize = normalize_to_neg_one_to_one if auto_normalize else identity
        self.unnormalize = unnormalize_to_zero_to_one if auto_normalize else identity

    def forward(self, img, generator=None):
        x0 = self.normalize(img)
        t = torch.randint(0, self.num_timesteps, (len(x0),), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        targets = {
            "pred_noise": eps,
            "pred_x0": x0,
            "pred_v": abar.sqrt() * eps - (1 - abar).sqrt() * x0,
        }
        return (self.model(x_t, t) - targets[self.objective]).square().mean()


class LucidrainsModule(L.LightningModule):
    """A LightningModule around the stand-in: ``diffusion.model`` and ``diffusion``."""

    def __init__(self, objective: str = "pred_noise", auto_normalize: bool = True) -> None:
        super().__init__()
        self.diffusion = GaussianDiffusionStandIn(
            UnetStandIn(), objective=objective, auto_normalize=auto_normalize
        )

    def training_step(self, batch, batch_idx):
        generator = torch.Generator().manual_seed(1000 + self.global_step)
        return self.diffusion(batch[0], generator=generator)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


def labelled_digits_loaders(n_train: int = 64, n_val: int = 32, batch_size: int = 32):
    """The digits of :func:`tests.conftest.digits_tensors` (in [0, 1]) with their class labels,
    ``(x, y)`` samples."""
    import numpy as np
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader, TensorDataset

    train, val = digits_tensors(n_train, n_val)
    target = load_digits().target
    order = np.random.default_rng(0).permutation(len(target))  # digits_tensors' order, seed 0
    labels = torch.from_numpy(target[order]).long()
    return (
        DataLoader(TensorDataset(train, labels[:n_train]), batch_size=batch_size, shuffle=False),
        DataLoader(TensorDataset(val, labels[n_train : n_train + n_val]), batch_size=batch_size),
    )
