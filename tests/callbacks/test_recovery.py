"""RecoveryMonitor in real (tiny) Lightning runs on CPU, on decoders with known answers.

- A decoder that can only produce the training digits (a soft nearest-centre mixture of them):
  the training probe is recovered to ~0, held-out digits are not (Webster et al. (2019), sec. 3:
  MRE-gap near 1, KS p tiny), and ``MemorizationEarlyStopping`` on the KS p-value stops the run.
- A decoder whose range is the top-20 PCA subspace of all digits: every digit is recovered to its
  PCA residual, so the logged medians, gap and KS p equal numpy / scipy on those residuals.
- An autoencoder with ``steps=0``: the errors are its reconstruction errors.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader, TensorDataset

from lightning_memwatch.callbacks import MemorizationEarlyStopping, RecoveryMonitor
from lightning_memwatch.callbacks.recovery import CHUNK
from tests.conftest import (
    FixedDecoderModule,
    PCADecoder,
    assert_resume_gives_the_same_metrics,
    digits_loaders,
    digits_tensors,
    make_autoencoder,
    memorizing_module,
    quiet_trainer,
    read_events,
)

KEYS = ("mre/train", "mre/val", "mre_gap", "ks_pvalue")


def loaders(train: torch.Tensor, val: torch.Tensor) -> tuple[DataLoader, DataLoader]:
    return DataLoader(TensorDataset(train), batch_size=16), DataLoader(TensorDataset(val), 16)


def fit(callbacks, model, train_loader, val_loader, max_epochs=1, **trainer_kwargs):
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=max_epochs, **trainer_kwargs)
    trainer.fit(model, train_loader, val_loader)
    return trainer


def logged(trainer) -> dict[str, float]:
    return {
        key: value.item()
        for key, value in trainer.callback_metrics.items()
        if key.startswith("memwatch/recovery/")
    }


def pca_module(digits: torch.Tensor, k: int = 20) -> FixedDecoderModule:
    flat = digits.flatten(1).double()
    mean = flat.mean(0)
    basis = torch.linalg.svd(flat - mean, full_matrices=False)[2][:k].T
    return FixedDecoderModule(PCADecoder(mean.float(), basis.float().contiguous()), k)


def test_memorizing_decoder_is_caught_and_every_key_is_logged():
    train, val = digits_tensors(n_train=24, n_val=40)
    cb = RecoveryMonitor(probe_size=16, max_overhead=math.inf)
    trainer = fit([cb], memorizing_module(train), *loaders(train, val))
    got = logged(trainer)
    assert set(got) == set(cb.logged_keys)
    # Observed: MRE train ~1e-9, val ~0.03; gap ~1, KS p ~1e-9 (16 v 16, disjoint samples).
    assert got["memwatch/recovery/mre/train"] < 1e-4
    assert got["memwatch/recovery/mre/val"] > 100 * got["memwatch/recovery/mre/train"]
    assert got["memwatch/recovery/mre_gap"] > 0.9
    assert got["memwatch/recovery/ks_pvalue"] < 1e-6
    assert got["memwatch/recovery/probe_size"] == 16 and got["memwatch/recovery/nonfinite"] == 0
    assert got["memwatch/recovery/seconds"] > 0 and cb.last_logged_epoch == 0


def test_generalizing_decoder_values_equal_numpy_on_pca_residuals():
    """Every digit recovers to its PCA residual: the logged medians, Webster et al.'s gap and the KS
    p-value equal numpy / scipy on the residuals of the monitor's probe (two chunks a split)."""
    train, val = digits_tensors(n_train=200, n_val=100)
    model = pca_module(torch.cat([train, val]))
    cb = RecoveryMonitor(probe_size=CHUNK + 16, max_overhead=math.inf)
    got = logged(fit([cb], model, *loaders(train, val)))
    mean, basis = model.decoder.mean.double().numpy(), model.decoder.basis.double().numpy()
    residual = {}
    for split in ("train", "val"):
        centred = cb.inputs[split].flatten(1).double().numpy() - mean
        residual[split] = ((centred - centred @ basis @ basis.T) ** 2).mean(1)
    mre = {split: np.median(values) for split, values in residual.items()}
    for split in ("train", "val"):
        assert got[f"memwatch/recovery/mre/{split}"] == pytest.approx(mre[split], rel=1e-4)
    gap = (mre["val"] - mre["train"]) / mre["val"]
    assert got["memwatch/recovery/mre_gap"] == pytest.approx(gap, rel=1e-3, abs=1e-4)
    ks = stats.ks_2samp(residual["train"], residual["val"]).pvalue
    assert got["memwatch/recovery/ks_pvalue"] == pytest.approx(ks, rel=1e-6)
    assert ks > 0.05  # train and val errors come from one distribution here


def test_steps_zero_gives_the_autoencoder_reconstruction_errors():
    model = make_autoencoder(dropout=0.0)
    cb = RecoveryMonitor(encoder="encode", steps=0, probe_size=16, max_overhead=math.inf)
    got = logged(fit([cb], model, *digits_loaders(), max_epochs=2))
    model.eval()
    errors = {}
    with torch.no_grad():
        for split in ("train", "val"):
            x = cb.inputs[split]
            errors[split] = (model.decoder(model.encoder(x)) - x).double().square().mean((1, 2, 3))
    for split in ("train", "val"):
        median = np.median(errors[split].numpy())
        assert got[f"memwatch/recovery/mre/{split}"] == pytest.approx(median, rel=1e-6)
    assert got["memwatch/recovery/ks_pvalue"] == pytest.approx(
        stats.ks_2samp(errors["train"].numpy(), errors["val"].numpy()).pvalue, rel=1e-9
    )


def test_encoder_start_never_loses_to_steps_zero():
    """The encoder's latent is one of the starts and each sample keeps its best: recovery with
    steps can only lower the errors of the encoder alone."""
    medians = {}
    for steps in (0, 20):
        L.seed_everything(0, verbose=False)
        model = make_autoencoder(dropout=0.0)
        cb = RecoveryMonitor(encoder="encode", steps=steps, probe_size=16, max_overhead=math.inf)
        got = logged(fit([cb], model, *digits_loaders()))
        medians[steps] = [got[f"memwatch/recovery/mre/{s}"] for s in ("train", "val")]
    assert all(a <= b for a, b in zip(medians[20], medians[0], strict=True))
    assert medians[20][1] < medians[0][1]  # the tiny autoencoder's encoder is far from optimal


def test_training_is_bit_identical_with_and_without_the_monitor():
    def run(callbacks):
        L.seed_everything(0, verbose=False)
        model = make_autoencoder()
        fit(callbacks, model, *digits_loaders(), max_epochs=3)
        return model

    plain = run([])
    watched = run(
        [RecoveryMonitor(encoder="encode", probe_size=16, steps=10, max_overhead=math.inf)]
    )
    assert plain.losses == watched.losses
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_early_stopping_on_the_ks_pvalue_stops_a_memorizing_run_only():
    train, val = digits_tensors(n_train=24, n_val=40)
    stopper = MemorizationEarlyStopping(threshold=0.01, mode="below", patience=1)
    trainer = fit(
        [RecoveryMonitor(probe_size=16, max_overhead=math.inf), stopper],
        memorizing_module(train),
        *loaders(train, val),
        max_epochs=6,
    )
    assert stopper.stopped_epoch == 1 and trainer.current_epoch == 2

    train, val = digits_tensors(n_train=200, n_val=100)
    stopper = MemorizationEarlyStopping(threshold=0.01, mode="below")
    trainer = fit(
        [RecoveryMonitor(probe_size=32, max_overhead=math.inf), stopper],
        pca_module(torch.cat([train, val])),
        *loaders(train, val),
        max_epochs=3,
    )
    assert stopper.fired_epoch is None and trainer.current_epoch == 3


def test_tensorboard_histograms_error_figure_and_pairs(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_memwatch.callbacks.machinery import measuring as monitor_module

    monkeypatch.setattr(monitor_module, "FIGURE_EVERY", 1)  # the figure at every measurement

    train, val = digits_tensors(n_train=24, n_val=40)
    cb = RecoveryMonitor(probe_size=16, max_overhead=math.inf)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    fit([cb], memorizing_module(train), *loaders(train, val), max_epochs=2, logger=logger)
    logger.experiment.flush()
    events = read_events(tmp_path / "run" / "version_0")
    tags = events.Tags()
    assert set(cb.logged_keys) <= set(tags["scalars"])
    assert {"memwatch/recovery/errors/train", "memwatch/recovery/errors/val"} <= set(
        tags["histograms"]
    )
    assert {
        "memwatch/recovery/error_distributions",
        "memwatch/recovery/pairs/train",
        "memwatch/recovery/pairs/val",
    } <= set(tags["images"])
    pairs = events.Images("memwatch/recovery/pairs/train")[-1]
    # 8 pairs, 4 a row, the 8 x 8 digits enlarged 8 times (64 px), 2 px apart
    assert (pairs.height, pairs.width) == (2 * 64 + 2, 4 * (2 * 64 + 8) - 6)
    scalar_steps = [e.step for e in events.Scalars("memwatch/recovery/mre_gap")]
    assert scalar_steps == [e.step for e in events.Images("memwatch/recovery/pairs/val")]
    histogram = events.Histograms("memwatch/recovery/errors/train")[-1].histogram_value
    assert histogram.num == 16 and histogram.min < 1e-6  # memorized digits recover to ~0


def test_resume_watches_the_same_probe_and_gives_the_same_metrics(tmp_path):
    assert_resume_gives_the_same_metrics(
        lambda: RecoveryMonitor(encoder="encode", probe_size=16, steps=10, max_overhead=math.inf),
        tmp_path,
    )
