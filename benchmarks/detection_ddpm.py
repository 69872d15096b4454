"""Class ``ddpm`` of ``benchmarks/detection.py``: an epsilon-predicting DDPM (Ho et al. 2020,
arXiv:2006.11239) of its own on the 8 x 8 digits in [-1, 1], small enough for 2 CPU cores: an
MLP denoiser ``net(x_t, t)`` (a learned timestep embedding, 3 hidden layers of 512) and an
``alphas_cumprod`` buffer of the linear schedule rescaled to ``T = 200`` steps, no
``validation_step``. Memorizing on 32 digits (2,560 steps), generalizing on 1,400 (2,640), batch
128 (measured over seeds 0-11: the memorizing runs' near-copy share passes 10 % at step 1,360
[1,056, 1,536] and ends at 15-29 %; the generalizing runs' stays at 0; ``docs/detection.md``).

Monitors: ``DiffusionMonitor(families=("loss", "spectrum"))`` on ``net`` and its schedule, and
``EffectAgreement`` on the two diffusion families that stand for the recovery errors and psi of
the decoder classes (``docs/diffusion.md``, "Rules"): the denoising loss and the x0-estimate's
psi, both lower on training samples under memorization. The recommended rule of
``detection_rules.tunables`` reads these families on this class
(``detection_rules.AGREEMENT_PAIRS``); the live ``memwatch/agreement/bound`` is recorded too.

Ground truth at every epoch, plain torch and numpy, no memwatch code: 256 samples of a
deterministic DDIM written here (Song et al. 2021, arXiv:2010.02502, eq. 12 with eta 0; 20
steps; the x0-estimate clipped to [-1, 1], as diffusers' ``DDIMScheduler`` does by default;
starting noise of a generator seeded 0) and ``detection_truth.copy_shares`` against the
deduplicated training digits (near-copy share ``d1 / d2 < 1/3``; Yoon et al. 2023; Gu et al.
2023, arXiv:2310.02664); the held-out denoising loss (256 digits, 20 fixed timesteps, noise
fixed by a generator of its own) stands for the validation loss the module does not log.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import lightning as L
from detection_classes import N_GENERALIZE, N_MEMORIZE, N_VAL, ModelClass, Options, Plan
from detection_rules import EFFECT_GRID, Rule, Tunable, scalar_rule
from detection_truth import copy_shares, evaluating
from digits_vae import DigitsDataModule

from lightning_memwatch import DiffusionMonitor, EffectAgreement

#: Training timesteps of the schedule.
STEPS = 200
#: Ground truth: samples, DDIM steps, and the timesteps of the held-out denoising loss.
TRUTH_SAMPLES, TRUTH_DDIM_STEPS, LOSS_TIMESTEPS = 256, 20, 20
#: ``EffectAgreement``'s families on a diffusion model (``docs/diffusion.md``, "Rules").
AGREEMENT = (("diffusion/loss", "loss", -1), ("diffusion/spectrum", "log_volume", -1))
LOSS_UPPER = "memwatch/diffusion/loss/effect_upper"
PSI_UPPER = "memwatch/diffusion/spectrum/log_volume/effect_upper"

#: 32 digits x 128 passes = 32 steps of batch 128 an epoch; 1,400 x 3 = 33 steps.
PLANS = {
    "memorize": Plan(N_MEMORIZE, 128, 128, 80, 8),
    "generalize": Plan(N_GENERALIZE, 128, 3, 80, 8),
}


def linear_alphas_cumprod(steps: int = STEPS) -> Tensor:
    """``abar_t = prod_{s <= t} (1 - beta_s)`` of DDPM's linear betas (1e-4 to 0.02 over 1,000
    steps; Ho et al. 2020, sec. 4), rescaled to ``steps`` steps."""
    scale = 1000 / steps
    betas = torch.linspace(1e-4 * scale, 0.02 * scale, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


class MLPDenoiser(nn.Module):
    """``net(x_t, t) -> eps``: the flattened image and a learned timestep embedding through an
    MLP (SiLU), reshaped to the image."""

    def __init__(self, steps: int = STEPS, width: int = 512, embedding: int = 64) -> None:
        super().__init__()
        self.time = nn.Embedding(steps, embedding)
        self.net = nn.Sequential(
            nn.Linear(64 + embedding, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, 64),
        )

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x_t.flatten(1), self.time(t)], 1)).view_as(x_t)


class DigitsDDPM(L.LightningModule):
    """Epsilon prediction on digits in [0, 1] mapped to [-1, 1]: the loss
    ``|eps - net(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)|^2`` at uniform ``t`` (Ho et al.
    2020, eq. 14); Adam at ``lr``."""

    def __init__(self, steps: int = STEPS, lr: float = 2e-3) -> None:
        super().__init__()
        self.net = MLPDenoiser(steps)
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod(steps))
        self.lr = lr

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x0 = batch[0] * 2 - 1
        eps = torch.randn_like(x0)
        t = torch.randint(0, len(self.alphas_cumprod), (len(x0),), device=x0.device)
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        return (self.net(x_t, t) - eps).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def model_and_data(plan: Plan, seed: int) -> tuple[Any, Any]:
    data = DigitsDataModule(plan.n_train, N_VAL, plan.batch_size, seed, plan.passes)
    return DigitsDDPM(), data


def monitors(plan: Plan, options: Options) -> list[Any]:
    """``DiffusionMonitor`` (loss and spectrum, default grids) on the run's probe, seed,
    schedule and budget, then ``EffectAgreement`` on its two families."""
    monitor = DiffusionMonitor(
        denoiser="net",
        schedule="alphas_cumprod",
        prediction="epsilon",
        data_range=(0, 1),
        families=("loss", "spectrum"),
        probe_size=16 if options.fast else min(options.probe, plan.n_train),
        every_n_epochs=plan.every,
        max_overhead=options.budget,
        seed=options.seed,
    )
    return [monitor, EffectAgreement(families=AGREEMENT)]


def ddim_samples(net: nn.Module, abar: Tensor, count: int, steps: int, seed: int = 0) -> Tensor:
    """``count`` samples in [-1, 1] of the deterministic DDIM (eta 0) on ``steps`` evenly
    spaced timesteps from ``T - 1`` to 0: ``x0_hat = clip((x_t - sqrt(1 - abar_t) eps) /
    sqrt(abar_t))``, ``eps`` recomputed from the clipped ``x0_hat``, ``x_s = sqrt(abar_s)
    x0_hat + sqrt(1 - abar_s) eps`` (``abar = 1`` after the last step); starting noise from a
    generator of its own."""
    device = abar.device
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 1, 8, 8, generator=generator).to(device)
    grid = torch.linspace(len(abar) - 1, 0, steps).round().long().tolist()
    with torch.no_grad():
        for i, t in enumerate(grid):
            a = abar[t]
            eps = net(x, torch.full((count,), t, device=device, dtype=torch.long))
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            a_next = abar[grid[i + 1]] if i + 1 < len(grid) else torch.ones_like(a)
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x


def denoising_loss(net: nn.Module, abar: Tensor, images: Tensor, timesteps: int) -> float:
    """Mean ``|eps - net(x_t, t)|^2`` of ``images`` in [0, 1] at ``timesteps`` evenly spaced
    timesteps, each image with one noise draw per timestep from a generator seeded 1."""
    device = abar.device
    generator = torch.Generator().manual_seed(1)
    x0 = (images * 2 - 1).repeat(timesteps, 1, 1, 1)
    grid = torch.linspace(0, len(abar) - 1, timesteps).round().long()
    t = grid.repeat_interleave(len(images))
    eps = torch.randn(x0.shape, generator=generator)
    x0, eps, t = x0.to(device), eps.to(device), t.to(device)
    a = abar[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        return float((net(a.sqrt() * x0 + (1 - a).sqrt() * eps, t) - eps).square().mean())


def copy_truth(model: Any, data: Any, fast: bool) -> dict[str, float]:
    """:func:`detection_truth.copy_shares` of the DDIM samples (in [0, 1]) against the distinct
    training digits (a repeated digit would be its own second nearest: ``d1 / d2 = 1``), and
    the held-out and training denoising losses (``heldout_loss``, ``train_loss``)."""
    count, steps, timesteps = (64, 5, 4) if fast else (TRUTH_SAMPLES, TRUTH_DDIM_STEPS, 20)

    def compute() -> dict[str, float]:
        net, abar = model.net, model.alphas_cumprod
        samples = (ddim_samples(net, abar, count, steps).cpu() + 1) / 2
        train = torch.unique(data.train_images.flatten(1), dim=0)
        out = copy_shares(samples, train, data.val_images)
        out["heldout_loss"] = denoising_loss(net, abar, data.val_images, timesteps)
        out["train_loss"] = denoising_loss(net, abar, data.train_images[:N_VAL], timesteps)
        return out

    return evaluating(model)(compute)


def rules() -> list[Rule]:
    """The diffusion keys as ``MemorizationEarlyStopping`` reads them: the provisional rule of
    ``docs/diffusion.md`` (loss ``effect_upper < -0.5``), the same on psi, the loss's KS test."""
    return [
        Rule(
            "diffusion loss effect_upper < -0.5 (docs/diffusion.md)",
            "paper",
            scalar_rule(LOSS_UPPER, -0.5, "below"),
        ),
        Rule("diffusion psi effect_upper < -0.5", "paper", scalar_rule(PSI_UPPER, -0.5, "below")),
        Rule(
            "KS p < 0.01: diffusion loss",
            "ks",
            scalar_rule("memwatch/diffusion/loss/ks_pvalue", 0.01, "below"),
        ),
    ]


def tunables() -> list[Tunable]:
    """The provisional diffusion rule with its threshold ``t`` (split-half and timing tables)."""
    return [
        Tunable(
            "diffusion loss effect_upper < -t",
            f'MemorizationEarlyStopping("{LOSS_UPPER}", threshold=-{{t}}, mode="below")',
            lambda t: Rule(
                f"diffusion loss effect_upper < -{t:g}",
                "tuned",
                scalar_rule(LOSS_UPPER, -t, "below"),
            ),
            EFFECT_GRID,
            0.5,
        )
    ]


CLASS = ModelClass(
    name="ddpm",
    plans=PLANS,
    model_and_data=model_and_data,
    monitors=monitors,
    truth=copy_truth,
    truth_key="copy_share",
    truth_label="share of 256 DDIM samples with d1/d2 < 1/3 to the distinct training digits",
    copy_key="copy_share",
    val_key="heldout_loss",
    rules=rules,
    tunables=tunables,
)
