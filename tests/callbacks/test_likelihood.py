"""LikelihoodMonitor in real (tiny) Lightning runs on CPU."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memwatch import LikelihoodMonitor
from lightning_memwatch.functional import (
    bernoulli_log_likelihood,
    importance_log_likelihood,
    posterior_from_encoder,
)
from tests.callbacks.test_geometry import fit
from tests.conftest import (
    assert_resume_gives_the_same_metrics,
    digits_tensors,
    make_autoencoder,
    quiet_trainer,
)


def monitor(**kwargs) -> LikelihoodMonitor:
    """TinyAutoencoder: ``encode`` gives ``(z, 0)``, a unit-variance Gaussian ``q(z|x)``; its
    decoder ends in a sigmoid, so its outputs are Bernoulli probabilities."""
    options = {
        "encoder": "encode",
        "likelihood": "bernoulli_probs",
        "probe_size": 12,
        "num_samples": 16,
        "max_overhead": math.inf,
    }
    options.update(kwargs)
    return LikelihoodMonitor(**options)


class TinyVAE(L.LightningModule):
    """A Bernoulli VAE on 8 x 8 digits (van den Burg's MNIST model, scaled down)."""

    def __init__(self, latent_dim: int = 4, hidden: int = 64, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 64),
            nn.Unflatten(1, (1, 8, 8)),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return mean, log_var

    def training_step(self, batch, batch_idx):
        (x,) = batch
        mean, log_var = self.encode(x)
        z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
        rec = nn.functional.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum()
        return (rec + kl) / len(x)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def test_logs_every_key_it_declares_and_writes_histograms(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = monitor()
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    trainer, _ = fit([cb], max_epochs=2, logger=logger)
    logged = {k for k in trainer.callback_metrics if k.startswith("memwatch/")}
    assert logged == set(cb.logged_keys)
    assert {f"memwatch/likelihood/{key}" for key in ("train", "val", "gap", "ks_pvalue")} <= logged
    assert trainer.callback_metrics["memwatch/likelihood/probe_size"] == 12
    assert trainer.callback_metrics["memwatch/likelihood/nonfinite"] == 0
    logger.experiment.flush()
    events = EventAccumulator(
        str(tmp_path / "run" / "version_0"), size_guidance={"tensors": 0, "histograms": 0}
    )
    events.Reload()
    tags = events.Tags()
    assert set(cb.logged_keys) <= set(tags["scalars"])
    assert {"memwatch/likelihood/log_px/train", "memwatch/likelihood/log_px/val"} <= set(
        tags["histograms"]
    )
    scalar_steps = [e.step for e in events.Scalars("memwatch/likelihood/train")]
    assert scalar_steps == [e.step for e in events.Histograms("memwatch/likelihood/log_px/train")]
    assert "custom_scalars__config__" in tags["tensors"]


def test_values_equal_an_independent_recomputation():
    """The logged means, gap and KS p-value equal numpy/scipy on the functional estimates with
    the documented seeding (seed + 7919 at every epoch, train then val)."""
    cb = monitor()
    trainer, model = fit([cb], max_epochs=1)
    model.eval()
    generator = torch.Generator().manual_seed(cb.seed + 7919)
    lik = bernoulli_log_likelihood(model.decoder, logits=False)
    log_px = {
        split: importance_log_likelihood(
            cb.inputs[split],
            posterior_from_encoder(model.encode),
            lik,
            num_samples=16,
            generator=generator,
        ).numpy()
        for split in ("train", "val")
    }
    got = {
        k.rsplit("/", 1)[1]: v.item()
        for k, v in trainer.callback_metrics.items()
        if k.startswith("memwatch/likelihood/")
    }
    assert got["train"] == pytest.approx(log_px["train"].mean(), rel=1e-6)
    assert got["val"] == pytest.approx(log_px["val"].mean(), rel=1e-6)
    assert got["gap"] == pytest.approx(log_px["train"].mean() - log_px["val"].mean(), abs=1e-4)
    ks = stats.ks_2samp(log_px["train"], log_px["val"]).pvalue
    assert got["ks_pvalue"] == pytest.approx(ks, rel=1e-6)


def test_training_is_bit_identical_with_and_without_the_monitor():
    _, plain = fit([], max_epochs=2)
    _, watched = fit([monitor()], max_epochs=2)
    assert plain.losses == watched.losses
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_sharded_probe_gives_the_single_process_values():
    """Each DDP rank measures its ``shard``; the samples are drawn for the whole probe, so the
    shards interleave back into the single-process values."""
    model = make_autoencoder().eval()
    cb = monitor(likelihood="gaussian", scale=0.3)
    x, _ = digits_tensors(10, 1)

    def run(rank, world):
        return cb.log_px(model, x, torch.Generator().manual_seed(4), rank, world)

    single = run(0, 1)
    merged = torch.empty_like(single)
    merged[0::2], merged[1::2] = run(0, 2), run(1, 2)
    torch.testing.assert_close(merged, single, rtol=1e-6, atol=1e-6)


def test_resume_gives_the_same_numbers(tmp_path):
    assert_resume_gives_the_same_metrics(monitor, tmp_path)


def test_a_vae_that_memorizes_gives_its_training_digits_higher_likelihood():
    """16 digits seen 150 times: the train probe's log p(x) is far above the held-out one's."""
    train, val = digits_tensors(16, 64)
    epochs = 10  # 15 passes over the 16 digits per epoch; one measurement, at the end
    cb = LikelihoodMonitor(
        encoder="encode",
        probe_size=16,
        every_n_epochs=epochs,
        num_samples=64,
        max_overhead=math.inf,
    )
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=[cb], max_epochs=epochs, num_sanity_val_steps=0)
    trainer.fit(
        TinyVAE(),
        DataLoader(TensorDataset(train.repeat(15, 1, 1, 1)), batch_size=16, shuffle=True),
        DataLoader(TensorDataset(val), batch_size=64),
    )
    got = {
        k.rsplit("/", 1)[1]: v.item()
        for k, v in trainer.callback_metrics.items()
        if k.startswith("memwatch/likelihood/")
    }
    assert got["gap"] > 5.0
    assert got["ks_pvalue"] < 0.01


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoder": None}, r"encoder.*q\(z\|x\)"),
        ({"scale": 0.0}, "scale"),
        ({"num_samples": 0}, "num_samples"),
        ({"likelihood": ""}, "likelihood"),
        ({"probe_size": 0}, "probe_size"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        monitor(**kwargs)


def test_unknown_likelihood_fails_at_setup_naming_the_choices():
    with pytest.raises(ValueError, match=r"one of \('bernoulli'.*has no `poisson` attribute"):
        fit([monitor(likelihood="poisson")], max_epochs=1)


def test_deterministic_encoder_fails_before_training_with_the_fix():
    model = make_autoencoder()
    with pytest.raises(ValueError, match=r"\(mean, log_var\).*probabilistic encoder"):
        fit([monitor(encoder="encoder")], max_epochs=1, model=model)
    assert model.losses == []


def test_a_module_method_as_likelihood():
    """``likelihood="name"`` calls the module's ``log_likelihood(x, z)``: here the Gaussian of
    scale 0.3 written by hand equals the built-in ``"gaussian"``."""
    model = make_autoencoder(dropout=0.0)

    def log_lik(x, z):
        mean = model.decoder(z).flatten(1).double()
        dist = torch.distributions.Normal(mean, 0.3)
        return dist.log_prob(x.flatten(1).double()).sum(1)

    model.gauss = log_lik
    x, _ = digits_tensors(6, 1)
    model.eval()
    values = [
        monitor(likelihood=name, scale=0.3).log_px(model, x, torch.Generator().manual_seed(0))
        for name in ("gauss", "gaussian")
    ]
    torch.testing.assert_close(values[0], values[1], rtol=1e-9, atol=1e-9)
    assert np.isfinite(values[0].numpy()).all()


def test_memorization_early_stopping_watches_the_likelihood_gap():
    """A rule that holds at every measurement (gap above -1e9) stops at the first one."""
    from lightning_memwatch import MemorizationEarlyStopping

    stopper = MemorizationEarlyStopping("memwatch/likelihood/gap", threshold=-1e9, mode="above")
    trainer, _ = fit([monitor(every_n_epochs=2), stopper], max_epochs=5)
    assert stopper.stopped_epoch == 1 and trainer.current_epoch == 2
