"""GeometryMonitor in real (tiny) Lightning runs on CPU."""

from __future__ import annotations

import copy
import math

import lightning as L
import numpy as np
import pytest
import torch

from lightning_memwatch.callbacks import GeometryMonitor
from lightning_memwatch.functional import singular_values
from lightning_memwatch.metrics import SpectrumGap
from tests.conftest import (
    assert_resume_gives_the_same_metrics,
    digits_loaders,
    make_autoencoder,
    quiet_trainer,
    read_events,
)

RADII = (0.1, 0.2)  # 8 x 8 digits in [0, 1]: nearest neighbours are ~1-3 apart


def monitor(**kwargs) -> GeometryMonitor:
    options = {"encoder": "encode", "probe_size": 12, "max_overhead": math.inf, "radii": RADII}
    options.update(kwargs)
    return GeometryMonitor(**options)


def fit(callbacks, max_epochs=2, seed=0, model=None, **trainer_kwargs):
    L.seed_everything(seed, verbose=False)
    model = model or make_autoencoder()
    train, val = digits_loaders()
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=max_epochs, **trainer_kwargs)
    trainer.fit(model, train, val)
    return trainer, model


def test_logs_every_key_it_declares():
    cb = monitor()
    trainer, _ = fit([cb])
    logged = {k for k in trainer.callback_metrics if k.startswith("memwatch/")}
    assert logged == set(cb.logged_keys)
    for key in ("memwatch/spectrum/log_volume/gap", "memwatch/density/dip/ks_pvalue"):
        assert key in logged
    assert trainer.callback_metrics["memwatch/spectrum/probe_size"] == 12
    assert cb.last_logged_epoch == 1


def test_spectrum_values_equal_an_independent_recomputation():
    """The logged train/val means equal numpy on singular values computed outside the callback."""
    cb = monitor(families=("spectrum",))
    trainer, model = fit([cb], max_epochs=1)
    model.eval()
    psi = {}
    for split in ("train", "val"):
        x = cb.inputs[split]
        with torch.no_grad():
            z = model.encoder(x)
        s = singular_values(model.decoder, z).numpy()
        k = (s > 1e-4 * s[:, :1]).sum(1)
        psi[split] = np.mean([np.log(row[:ki]).sum() for row, ki in zip(s, k, strict=True)])
    # prior samples: N(0, I) from the monitor's own generator, seeded by seed and epoch (0)
    prior = torch.randn(12, 4, generator=torch.Generator().manual_seed(cb.seed + 7919))
    s = singular_values(model.decoder, prior).numpy()
    psi["prior"] = np.log(s).sum(1).mean()  # full rank here: k = 4 everywhere
    assert (s > 1e-4 * s[:, :1]).all()
    got = trainer.callback_metrics
    assert got["memwatch/spectrum/log_volume/prior"].item() == pytest.approx(psi["prior"], rel=1e-6)
    assert got["memwatch/spectrum/log_volume/train"].item() == pytest.approx(psi["train"], rel=1e-6)
    assert got["memwatch/spectrum/log_volume/val"].item() == pytest.approx(psi["val"], rel=1e-6)


def test_training_is_bit_identical_with_and_without_the_monitor():
    _, plain = fit([], max_epochs=3)
    _, watched = fit([monitor()], max_epochs=3)
    assert plain.losses == watched.losses
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_measurement_leaves_no_trace():
    """Callbacks before and after the monitor in one hook see identical modes (mixed on
    purpose), BatchNorm statistics, parameter grads and CPU RNG state."""
    seen = {}

    def snapshot(model):
        return {
            "modes": [m.training for m in model.modules()],
            "stats": copy.deepcopy(model.decoder[1].state_dict()),
            "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            "rng": torch.get_rng_state(),
        }

    class Before(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            pl_module.decoder.train()  # BatchNorm and dropout live, encoder stays in eval
            first = next(pl_module.parameters())
            first.grad = torch.full_like(first, 3.0)
            seen["before"] = snapshot(pl_module)

    class After(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            seen["after"] = snapshot(pl_module)

    fit([Before(), monitor(), After()], max_epochs=1)
    before, after = seen["before"], seen["after"]
    assert before["modes"] == after["modes"] and any(before["modes"]) and not all(before["modes"])
    for key, value in before["stats"].items():
        assert torch.equal(value, after["stats"][key]), key
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(before["rng"], after["rng"])


@pytest.mark.parametrize("inference_mode", [True, False])
def test_grad_modes_and_validate(inference_mode):
    cb = monitor(families=("spectrum",))
    trainer, model = fit([cb], max_epochs=1, inference_mode=inference_mode)
    fitted = trainer.callback_metrics["memwatch/spectrum/log_volume/train"].item()
    _, val = digits_loaders()
    trainer.validate(model, val, verbose=False)
    assert trainer.callback_metrics["memwatch/spectrum/log_volume/train"].item() == pytest.approx(
        fitted, rel=1e-6
    )


def test_bf16_mixed_precision_measures_in_float32():
    cb = monitor(families=("spectrum",))
    trainer, model = fit([cb], max_epochs=1, precision="bf16-mixed")
    metric = SpectrumGap()
    model.eval()
    for split in ("train", "val"):
        with torch.no_grad():
            z = model.encoder(cb.inputs[split])
        metric.update(singular_values(model.decoder, z), split)
    expected = metric.compute()["log_volume/gap"].item()
    got = trainer.callback_metrics["memwatch/spectrum/log_volume/gap"].item()
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_resume_watches_the_same_probe_and_gives_the_same_metrics(tmp_path):
    assert_resume_gives_the_same_metrics(monitor, tmp_path)


def test_skips_the_sanity_check_and_honours_every_n_epochs():
    class Spy(GeometryMonitor):
        epochs: list[int]

        def measure(self, trainer, pl_module, inputs, rows):
            self.epochs.append((trainer.current_epoch, trainer.sanity_checking))
            return super().measure(trainer, pl_module, inputs, rows)

    cb = Spy(encoder="encode", probe_size=8, max_overhead=math.inf, every_n_epochs=2, radii=RADII)
    cb.epochs = []
    fit([cb], max_epochs=5, num_sanity_val_steps=2)
    assert cb.epochs == [(1, False), (3, False)]


def test_validation_every_second_epoch_draws_the_probe_when_validation_first_runs():
    """With ``check_val_every_n_epoch=2`` and no sanity check, Lightning has not loaded the
    validation data when training starts: the probe is drawn at the first validation instead."""
    cb = monitor(families=("spectrum",))
    trainer, _ = fit([cb], max_epochs=4, check_val_every_n_epoch=2, num_sanity_val_steps=0)
    assert cb.last_logged_epoch == 3 and len(cb.inputs["val"]) == 12
    assert "memwatch/spectrum/log_volume/val" in trainer.callback_metrics


def test_slow_decoder_is_priced_before_any_measurement_and_never_paid():
    """A decoder with 400 extra operations a call, 1 % budget, 5 short epochs: the timed calls
    price a measurement above what the run earns, so none is made (probe size 0 at every
    epoch), the families are named, and the monitor spent little beyond its train start."""
    model = make_autoencoder()
    decoder = model.decoder

    class Slow(torch.nn.Module):
        def forward(self, z):
            total = z.new_zeros(())
            for _ in range(200):  # busy work, same output
                total = total + (z * 0).sum()
            return decoder(z) + total

    model.slow_decoder = Slow()
    cb = monitor(decoder="slow_decoder", probe_size=32, max_overhead=0.01)
    sizes = []

    class Record(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                sizes.append(int(trainer.callback_metrics["memwatch/spectrum/probe_size"]))

    fit([cb, Record()], max_epochs=5, model=model)
    assert sizes == [0] * 5 and cb.measurements == 0
    assert set(cb.budget.never) == set(cb.families)
    assert all(predicted > earned for predicted, earned in cb.budget.never.values())
    # beyond its train start only the hooks' bookkeeping at the 5 epochs, far less than the
    # cheapest measurement it was predicted to cost
    beyond = cb.budget.spent_seconds - cb.budget.start_seconds
    assert 0 <= beyond < 0.1 * min(predicted for predicted, _ in cb.budget.never.values())


def test_nan_decoder_is_counted_and_training_continues():
    model = make_autoencoder()
    decoder = model.decoder

    def half_nan(z):
        out = decoder(z)
        bad = (z[:, 0] > 0).reshape(-1, *([1] * (out.ndim - 1)))
        return torch.where(bad, out * torch.nan, out)

    model.nan_decoder = half_nan
    cb = monitor(decoder="nan_decoder", families=("spectrum",))
    trainer, _ = fit([cb], max_epochs=2, model=model)
    assert trainer.current_epoch == 2
    nonfinite = trainer.callback_metrics["memwatch/spectrum/nonfinite"].item()
    assert 0 < nonfinite < 24
    assert np.isfinite(trainer.callback_metrics["memwatch/spectrum/log_volume/train"].item())


def test_tensorboard_event_file_has_scalars_histograms_images_figures_and_layout(
    tmp_path, monkeypatch
):
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_memwatch.callbacks.machinery import measuring as monitor_module

    monkeypatch.setattr(monitor_module, "FIGURE_EVERY", 2)  # figures at the 2nd measurement
    from tensorboard.plugins.custom_scalar import layout_pb2

    cb = monitor()
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    fit([cb], max_epochs=2, logger=logger)
    logger.experiment.flush()
    events = read_events(tmp_path / "run" / "version_0")
    tags = events.Tags()
    assert set(cb.logged_keys) <= set(tags["scalars"])
    for split in ("train", "val"):
        assert f"memwatch/spectrum/log_s/{split}" in tags["histograms"]
        assert f"memwatch/density/dip_samples/{split}" in tags["histograms"]
    assert {
        "memwatch/spectrum/mean_spectrum",
        "memwatch/density/dip_path_lp",
        "memwatch/density/decay_line_lp",
        "memwatch/density/dip_path_images",
    } <= set(tags["images"])
    strip = events.Images("memwatch/density/dip_path_images")[-1]
    assert (strip.height, strip.width) == (3 * 66 - 2, 6 * 66 - 2)  # 17 digits of 64 px, 6 a row
    # images line up with the scalars' steps
    # the figures come at every FIGURE_EVERY-th measurement only, the histograms at each
    scalar_steps = [e.step for e in events.Scalars("memwatch/spectrum/log_volume/train")]
    image_steps = [e.step for e in events.Images("memwatch/spectrum/mean_spectrum")]
    assert len(scalar_steps) == 2 and image_steps == scalar_steps[1:]
    histogram_steps = [e.step for e in events.Histograms("memwatch/spectrum/log_s/train")]
    assert histogram_steps == scalar_steps
    # the custom-scalars layout puts train and val of one descriptor on one chart: the tag of
    # the runs `train` and `val` (two colours), which hold the keys' values at the same steps
    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["log_volume: train vs val"] == ["^memwatch/spectrum/log_volume$"]
    for split in ("train", "val"):
        run = read_events(tmp_path / "run" / "version_0" / split)
        logged = events.Scalars(f"memwatch/spectrum/log_volume/{split}")
        written = run.Scalars("memwatch/spectrum/log_volume")
        assert [(e.step, e.value) for e in written] == [(e.step, e.value) for e in logged]


def test_scalars_with_csv_logger_only(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    cb = monitor()
    fit([cb], max_epochs=1, logger=CSVLogger(tmp_path, name="csv", version=0))
    header = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert set(cb.logged_keys) <= set(header.split(","))


def test_without_matplotlib_figures_are_skipped_with_one_warning(tmp_path, monkeypatch):
    import sys

    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_memwatch.viz import figures

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(figures, "_warned_missing_matplotlib", False)
    from lightning_memwatch.callbacks.machinery import measuring as monitor_module

    monkeypatch.setattr(monitor_module, "FIGURE_EVERY", 1)  # figures due at every measurement
    cb = monitor()
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    with pytest.warns(UserWarning, match=r"lightning-memwatch\[viz\]") as record:
        fit([cb], max_epochs=2, logger=logger)
    assert sum("matplotlib" in str(w.message) for w in record) == 1
    logger.experiment.flush()
    events = read_events(tmp_path / "run" / "version_0")
    assert set(cb.logged_keys) <= set(events.Tags()["scalars"])
    assert "memwatch/spectrum/log_s/train" in events.Tags()["histograms"]
    assert "memwatch/spectrum/mean_spectrum" not in events.Tags()["images"]


def test_without_encoder_latents_come_from_recovery():
    """No encoder: the probe's latents are recovered (latent size from the hyperparameter) with
    the starts RecoveryMonitor uses, and the logged spectrum is the decoder's at those latents."""
    from lightning_memwatch.callbacks.machinery.latents import HISTORY_SIZE, chunk_seed
    from lightning_memwatch.functional import project_to_typical_set, recover_latents

    cb = GeometryMonitor(probe_size=8, max_overhead=math.inf, families=("spectrum",))
    trainer, model = fit([cb], max_epochs=1)
    assert cb.latent_dim == 4
    model.eval()
    generator = torch.Generator().manual_seed(chunk_seed(cb.seed, "train", 0, 0))
    z, errors = recover_latents(
        model.decoder,
        cb.inputs["train"],
        latent_dim=4,
        generator=generator,
        history_size=HISTORY_SIZE,
    )
    # without an encoder the latents are moved into the prior's typical set (a no-op for
    # latents already in it; project_to_typical_set is tested against scipy's chi quantiles)
    z = project_to_typical_set(z, "normal")
    s = singular_values(model.decoder, z).numpy()
    psi = np.mean([np.log(row[: (row > 1e-4 * row[0]).sum()]).sum() for row in s])
    got = trainer.callback_metrics["memwatch/spectrum/log_volume/train"].item()
    assert got == pytest.approx(psi, rel=1e-5)
    assert torch.isfinite(errors).all()


def test_an_epoch_the_budget_skips_is_not_a_fresh_check_for_early_stopping():
    """Measured at epochs 0 and 3 only: a rule that holds at every measurement, with patience 1,
    fires at epoch 3 (two fresh checks), not at epoch 1 on the stale value of epoch 0."""
    from lightning_memwatch.callbacks import MemorizationEarlyStopping

    cb = monitor(families=("spectrum",))
    sizes = iter([12, 0, 0, 12, 12])
    cb.budget.next_probe_size = lambda: next(sizes)
    stopper = MemorizationEarlyStopping(
        "memwatch/spectrum/log_volume/train", threshold=-1e9, mode="above", patience=1
    )
    trainer, _ = fit([cb, stopper], max_epochs=5, num_sanity_val_steps=0)
    assert stopper.stopped_epoch == 3 and trainer.current_epoch == 4
    assert cb.last_logged_epoch == 3
