"""GeometryMonitor on a Lightning autoencoder whose decoder has attention (``nn.MultiheadAttention``
and a diffusers ``Attention`` block): measured in forward mode on the math kernel, training
untouched; and on a decoder with a custom ``autograd.Function`` (reverse-mode fallback)."""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn

from lightning_memwatch.callbacks import GeometryMonitor
from lightning_memwatch.callbacks.machinery.isolation import measurement_context
from lightning_memwatch.functional import AutodiffFallbackWarning, autodiff, jacobian
from tests.attention_decoders import (
    FunctionDecoder,
    Square,
    attention_switches,
    diffusers_attention,
    reverse_jacobian64,
)
from tests.conftest import digits_loaders, quiet_trainer


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch):
    monkeypatch.setattr(autodiff, "_REMEMBERED", type(autodiff._REMEMBERED)())
    monkeypatch.setattr(autodiff, "_ANNOUNCED", set())


class AttentionDecoder(nn.Module):
    """``R^4 -> (1, 8, 8)``: 8 tokens of width 8, ``nn.MultiheadAttention`` (its fast path in
    eval mode), then a diffusers ``Attention`` block on the ``(8, 2, 4)`` map (SDPA inside)."""

    def __init__(self, latent_dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(latent_dim, 64)
        self.attention = nn.MultiheadAttention(8, num_heads=2, batch_first=True, dropout=0.1)
        self.block = diffusers_attention(8)
        self.out = nn.Sequential(nn.Dropout(0.1), nn.Linear(64, 64), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(z)).reshape(-1, 8, 8)
        h = h + self.attention(h, h, h, need_weights=False)[0]
        h = self.block(h.transpose(1, 2).reshape(-1, 8, 2, 4)).flatten(1)
        return self.out(h).reshape(-1, 1, 8, 8)


class AttentionAutoencoder(L.LightningModule):
    def __init__(self, decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 4))
        self.decoder = decoder if decoder is not None else AttentionDecoder()
        self.losses: list[float] = []

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = nn.functional.mse_loss(self.decoder(self.encoder(x)).reshape(x.shape), x)
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        self.log(
            "val_loss", nn.functional.mse_loss(self.decoder(self.encoder(x)).reshape(x.shape), x)
        )

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def monitor(**kwargs) -> GeometryMonitor:
    options = {
        "encoder": "encode",
        "probe_size": 8,
        "max_overhead": math.inf,
        "radii": (0.1, 0.2),
        "families": ("spectrum", "density"),
    }
    options.update(kwargs)
    return GeometryMonitor(**options)


def fit(callbacks, max_epochs=2, make_model=AttentionAutoencoder):
    L.seed_everything(0, verbose=False)
    model = make_model()
    train, val = digits_loaders()
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=max_epochs)
    trainer.fit(model, train, val)
    return trainer, model


def log_volume(s: np.ndarray) -> float:
    """Mean over points of the sum of log singular values above ``1e-4 s_1``."""
    return float(np.mean([np.log(row[row > 1e-4 * row[0]]).sum() for row in s]))


def test_an_attention_decoder_is_measured_and_training_is_bit_identical():
    before = attention_switches()
    _, plain = fit([])
    cb = monitor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, watched = fit([cb])
    assert plain.losses == watched.losses
    assert attention_switches() == before
    # attention is measured in forward mode: no fallback
    assert not [w for w in caught if issubclass(w.category, AutodiffFallbackWarning)]
    got = trainer.callback_metrics
    for family in ("spectrum", "density"):
        assert got[f"memwatch/{family}/nonfinite"] == 0
        assert got[f"memwatch/{family}/probe_size"] == 8
    for key in (
        "memwatch/spectrum/log_volume/train",
        "memwatch/spectrum/log_volume/val",
        "memwatch/spectrum/log_volume/prior",
        "memwatch/density/dip/train",
        "memwatch/density/decay/val",
    ):
        assert math.isfinite(got[key].item()), key
    # the logged log-volume equals one from float64 reverse-mode Jacobians of the final model
    watched.eval()
    for split in ("train", "val"):
        with torch.no_grad():
            z = watched.encoder(cb.inputs[split])
        s = np.linalg.svd(reverse_jacobian64(watched.decoder, z), compute_uv=False)
        expected = log_volume(s)
        assert got[f"memwatch/spectrum/log_volume/{split}"].item() == pytest.approx(
            expected, rel=1e-5, abs=1e-5
        )


def test_a_custom_function_decoder_is_measured_by_the_fallback_announced_once():
    def make_model():
        torch.manual_seed(0)
        decoder = nn.Sequential(FunctionDecoder(Square, m=4, n=64), nn.Unflatten(1, (1, 8, 8)))
        return AttentionAutoencoder(decoder)

    _, plain = fit([], make_model=make_model)
    cb = monitor(decoder="decoder")
    with pytest.warns(AutodiffFallbackWarning) as caught:
        trainer, watched = fit([cb], make_model=make_model)
    notices = [w for w in caught if issubclass(w.category, AutodiffFallbackWarning)]
    assert len(notices) == 1
    assert "GeometryMonitor(decoder='decoder')" in str(notices[0].message)
    assert "Square" in str(notices[0].message)
    assert plain.losses == watched.losses
    got = trainer.callback_metrics
    assert got["memwatch/spectrum/nonfinite"] == 0
    assert got["memwatch/density/nonfinite"] == 0
    watched.eval()
    with torch.no_grad():
        z = watched.encoder(cb.inputs["train"])
    s = np.linalg.svd(reverse_jacobian64(watched.decoder, z), compute_uv=False)
    assert got["memwatch/spectrum/log_volume/train"].item() == pytest.approx(
        log_volume(s), rel=1e-5, abs=1e-5
    )


@pytest.mark.parametrize(("rank", "announced"), [(0, 1), (1, 0)])
def test_the_fallback_notice_is_said_on_rank_zero_only(monkeypatch, rank, announced):
    monkeypatch.setattr(rank_zero_only, "rank", rank)
    torch.manual_seed(0)
    module = FunctionDecoder(Square)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with measurement_context(module, torch.device("cpu")):
            jacobian(module, torch.randn(3, 5))
    assert sum(issubclass(w.category, AutodiffFallbackWarning) for w in caught) == announced
