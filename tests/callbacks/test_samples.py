"""SampleMonitor in real (tiny) Lightning runs on CPU.

- The demo's VAE (``examples/digits_vae.py``) on 32 digits (memorizing) and on 1,400
  (generalizing): the sign pattern of C_T, and C_T and the copy fractions against numpy / scipy
  on the monitor's own samples.
- Samplers with known answers (Meehan et al.'s sanity cases on real digits): training digits
  plus tiny noise (copies), held-out digits of neither probe (fresh draws of the distribution).
- Bit-identical training, resume, TensorBoard, early stopping, misconfiguration.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memwatch import MemorizationEarlyStopping, SampleMonitor
from lightning_memwatch.functional import assign_cells, kmeans
from tests.conftest import (
    assert_resume_gives_the_same_metrics,
    digits_loaders,
    digits_tensors,
    make_autoencoder,
    meehan_ct,
    quiet_trainer,
    read_events,
)
from tests.examples.conftest import load_example

PREFIX = "memwatch/samples/"


def logged(trainer) -> dict[str, float]:
    return {
        key[len(PREFIX) :]: value.item()
        for key, value in trainer.callback_metrics.items()
        if key.startswith(PREFIX)
    }


class SamplerModule(L.LightningModule):
    """``sample(n, generator)`` draws ``n`` of the ``pool`` digits (without replacement) plus
    ``noise`` times Gaussian noise; training moves an unrelated scalar only, so the samples are
    the same at every epoch."""

    def __init__(self, pool: torch.Tensor, noise: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("pool", pool)
        self.noise = noise
        self.scalar = nn.Parameter(torch.ones(()))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        picks = torch.randperm(len(self.pool), generator=generator, device=generator.device)[:n]
        noise = torch.randn(self.pool[picks].shape, generator=generator, device=generator.device)
        return self.pool[picks] + self.noise * noise

    def training_step(self, batch, batch_idx):
        return (self.scalar - batch[0].mean()).square()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", (self.scalar - batch[0].mean()).square())

    def configure_optimizers(self):
        return torch.optim.SGD([self.scalar], lr=0.1)


def fit(callbacks, model, train, val, max_epochs=1, **kwargs):
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=max_epochs, **kwargs)
    loaders = (DataLoader(TensorDataset(x), batch_size=64) for x in (train, val))
    trainer.fit(model, *loaders)
    return trainer


def reference_values(
    cb: SampleMonitor, generated: torch.Tensor, heldout: torch.Tensor | None = None
) -> dict[str, float]:
    """C_T (Meehan et al. (2020), sec. 3, written out in ``tests/conftest.py``; tie-corrected by
    scipy when the monitor's ``tie_correction``) and the copy fractions in numpy from the monitor's
    reference, its held-out probe (or ``heldout``) and the given samples, on the k-means cells
    of the functional (seeded as the monitor seeds it)."""
    heldout = cb.inputs["val"] if heldout is None else heldout
    train = cb.reference.flatten(1).double()
    centroids, train_cells = kmeans(train, cb.cells, generator=torch.Generator().manual_seed(0))
    t, t_c = train.numpy(), train_cells.numpy()
    d_tt = np.sqrt(((t[:, None] - t[None]) ** 2).sum(-1))
    own = np.where(np.eye(len(t), dtype=bool), np.inf, d_tt).min(1)
    found = {}
    for name, x in (("p", heldout), ("q", generated)):
        x = x.flatten(1).double()
        cells = assign_cells(x, centroids).numpy()
        d = np.sqrt(((x.numpy()[:, None] - t[None]) ** 2).sum(-1))
        in_cell = np.where(cells[:, None] == t_c[None], d, np.inf).min(1)
        found[name] = (in_cell, cells, d.min(1) < own[d.argmin(1)])
    ct = meehan_ct(*found["p"][:2], *found["q"][:2], cb.cells, None, cb.metric.tie_correction)
    return {
        "ct": ct,
        "copy_fraction": found["q"][2].mean(),
        "heldout_copy_fraction": found["p"][2].mean(),
    }


# ------------------------------------------------------------------ the demo's VAE
@pytest.fixture(scope="module")
def demo_runs() -> dict[str, tuple]:
    """The demo's VAE with SampleMonitor at its defaults (held-out probe 64, reference up to
    1,024 training digits, 512 generated, 4 cells): run A on 32 digits (10 epochs of 32 steps),
    run B on 1,400 (4 epochs of 22 steps), the same 256 validation digits."""
    demo = load_example("digits_vae")
    runs = {}
    for name, n_train, epochs, batch_size, passes in (("A", 32, 10, 8, 8), ("B", 1400, 4, 64, 1)):
        with demo.quiet():
            L.seed_everything(0, verbose=False)
            data = demo.DigitsDataModule(n_train, 256, batch_size=batch_size, passes=passes)
            cb = SampleMonitor(every_n_epochs=epochs, max_overhead=math.inf)
            model = demo.DigitsVAE()
            trainer = demo.cpu_trainer(epochs, False, [cb])
            trainer.fit(model, datamodule=data)
        runs[name] = (trainer, cb, model)
    return runs


def test_demo_vae_memorizing_copies_and_generalizing_does_not(demo_runs):
    a, b = logged(demo_runs["A"][0]), logged(demo_runs["B"][0])
    for cb_values, (_, cb, _) in ((a, demo_runs["A"]), (b, demo_runs["B"])):
        assert set(cb_values) == {key[len(PREFIX) :] for key in cb.logged_keys}
        assert cb_values["probe_size"] == 64 and cb_values["nonfinite"] == 0
    assert len(demo_runs["A"][1].reference) == 32 and len(demo_runs["B"][1].reference) == 1024
    # Observed (seeds 0, 1, 2): A's C_T -2.76, -2.94, -2.96 (data copying); B's +3.35, +3.66,
    # +3.41 (its samples are blurrier than digits: underfitting); copy fractions A 0.62-0.69,
    # B 0.06-0.07 against B's held-out base rate 0.44. The null spread is about 1 / sqrt(4).
    assert a["ct"] < -2 and b["ct"] > 2
    assert a["copy_fraction"] > b["copy_fraction"]
    assert b["copy_fraction"] < b["heldout_copy_fraction"]


def test_demo_vae_values_equal_numpy_and_scipy_on_the_monitors_samples(demo_runs):
    trainer, cb, model = demo_runs["A"]
    z = torch.randn(cb.num_generated, model.latent_dim, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        generated = model.decoder(z)
    want = reference_values(cb, generated)
    got = logged(trainer)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


# -------------------------------------------------------------- samplers, known answers
def test_copying_sampler_is_caught_and_fresh_draws_are_not():
    """Meehan et al.'s sanity cases on digits: training digits plus 1e-3 noise give C_T far
    below 0 and a copy fraction of 1; digits of neither probe (fresh draws of the data
    distribution) give C_T within the null spread and the held-out base rate."""
    digits = torch.cat(digits_tensors(n_train=1100, n_val=300))
    train, val, pool = digits[:500], digits[1100:], digits[500:1100]
    results = {}
    for name, module in (("copies", SamplerModule(train, 1e-3)), ("fresh", SamplerModule(pool))):
        cb = SampleMonitor(
            sampler="sample", probe_size=200, num_generated=400, cells=4, max_overhead=math.inf
        )
        trainer = fit([cb], module, train, val, max_epochs=2)
        results[name] = logged(trainer)
        generated = module.sample(400, torch.Generator().manual_seed(0))
        for key, value in reference_values(cb, generated).items():
            assert results[name][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key)
    copies, fresh = results["copies"], results["fresh"]
    # Observed: copies C_T -10.4 (about the floor: every copy below every held-out digit of its
    # cell gives Z_U ~ -sqrt(3 n m / (n + m)), ~ -10 for 50 and 100 a cell), copy fraction 1.0;
    # fresh C_T -0.11, copy fraction 0.475 as the held-out probe's 0.475
    assert copies["ct"] < -8 and copies["copy_fraction"] == 1.0
    assert abs(fresh["ct"]) < 2  # 4 null standard deviations (about 1 / sqrt(4) each)
    assert fresh["copy_fraction"] == pytest.approx(fresh["heldout_copy_fraction"], abs=0.1)


@pytest.mark.parametrize("tie_correction", [False, True])
def test_a_smaller_budget_probe_generates_proportionally_fewer_samples(tie_correction):
    """When the budget lowers the held-out probe from 64 to 16, a quarter of the generated
    samples (the first 25 of the 100) are compared with it; with exact copies among them,
    ``tie_correction`` reaches C_T."""
    digits = torch.cat(digits_tensors(n_train=400, n_val=100))
    train, val = digits[:300], digits[400:]
    # exact copies (distance 0, tied) among fresh digits: a C_T that depends on the samples
    module = SamplerModule(torch.cat([train[:50], digits[300:400]]))
    cb = SampleMonitor(
        sampler="sample",
        num_generated=100,
        cells=1,
        max_overhead=math.inf,
        tie_correction=tie_correction,
    )
    cb.budget.next_probe_size = lambda: 16
    got = logged(fit([cb], module, train, val))
    assert got["probe_size"] == 16
    generated = module.sample(25, torch.Generator().manual_seed(0))
    want = reference_values(cb, generated, heldout=cb.inputs["val"][:16])
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_early_stopping_on_ct_stops_the_copying_run():
    digits = torch.cat(digits_tensors(n_train=300, n_val=100))
    train, val = digits[:300], digits[300:]
    cb = SampleMonitor(sampler="sample", num_generated=200, cells=2, max_overhead=math.inf)
    stopper = MemorizationEarlyStopping("memwatch/samples/ct", threshold=-3.0, mode="below")
    trainer = fit([cb, stopper], SamplerModule(train, 1e-3), train, val, max_epochs=5)
    assert stopper.stopped_epoch == 0 and trainer.current_epoch == 1


# ---------------------------------------------------------------- no trace, resume, TB
def test_training_is_bit_identical_with_and_without_the_monitor():
    def run(callbacks):
        L.seed_everything(0, verbose=False)
        model = make_autoencoder()  # BatchNorm and dropout in the decoder
        trainer = quiet_trainer(callbacks=callbacks, max_epochs=3)
        trainer.fit(model, *digits_loaders())
        return model

    plain = run([])
    watched = run([SampleMonitor(probe_size=32, num_generated=64, cells=2, max_overhead=math.inf)])
    assert plain.losses == watched.losses
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_watches_the_same_reference_and_projection(tmp_path):
    """Distances in the (trained) encoder's feature space, projected on a PCA fitted at the
    first measurement: a resumed run must restore that projection to log the same values."""
    assert_resume_gives_the_same_metrics(
        lambda: SampleMonitor(
            probe_size=32,
            reference_size=64,
            num_generated=64,
            cells=2,
            features="encoder",
            pca_dim=3,
            max_overhead=math.inf,
        ),
        tmp_path,
    )


def test_tensorboard_strip_of_samples_beside_their_nearest_training_digits(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    digits = torch.cat(digits_tensors(n_train=300, n_val=100))
    train, val = digits[:300], digits[300:]
    cb = SampleMonitor(sampler="sample", num_generated=100, cells=2, max_overhead=math.inf)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    fit([cb], SamplerModule(train, 1e-3), train, val, max_epochs=2, logger=logger)
    logger.experiment.flush()
    events = read_events(tmp_path / "run" / "version_0")
    assert set(cb.logged_keys) <= set(events.Tags()["scalars"])
    strip = events.Images("memwatch/samples/nearest")
    # 8 pairs, 4 a row, the 8 x 8 digits enlarged 8 times (64 px), 2 px apart
    assert (strip[-1].height, strip[-1].width) == (2 * 64 + 2, 4 * (2 * 64 + 8) - 6)
    assert [e.step for e in strip] == [e.step for e in events.Scalars("memwatch/samples/ct")]


# ------------------------------------------------------------------- misconfiguration
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sampler": ""}, "`sampler`"),
        ({"features": 3}, "`features`"),
        ({"reference_size": 1}, "`reference_size`"),
        ({"num_generated": 0}, "`num_generated`"),
        ({"cells": 0}, "`cells`"),
        ({"pca_dim": 0}, "`pca_dim`"),
        ({"tie_correction": 1}, "`tie_correction`"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SampleMonitor(**kwargs)


def test_missing_sampler_and_incomparable_samples_fail_early():
    train, val = digits_tensors(n_train=96, n_val=64)
    with pytest.raises(ValueError, match="`nope` attribute for the sampler"):
        fit([SampleMonitor(sampler="nope")], SamplerModule(train), train, val)
    flat = SamplerModule(train.flatten(1)[:, :10])
    with pytest.raises(ValueError, match="10 values per sample against the data's 64"):
        fit([SampleMonitor(sampler="sample", probe_size=16)], flat, train, val)
    with pytest.raises(ValueError, match="`pca_dim` at most"):
        fit(
            [SampleMonitor(sampler="sample", probe_size=16, pca_dim=65)],
            SamplerModule(train),
            train,
            val,
        )
