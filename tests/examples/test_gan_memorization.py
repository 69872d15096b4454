"""The GAN example: a module without validation_step, manual optimization, no encoder."""

from __future__ import annotations

import math

import lightning as L
import torch

from tests.examples.conftest import load_example

gan = load_example("gan_memorization")
digits = load_example("digits_vae")


class Losses(L.Callback):
    """The discriminator and generator losses of every epoch, and the weights at the end."""

    def __init__(self) -> None:
        self.values: list[tuple[float, float]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        self.values.append((metrics["loss_d"].item(), metrics["loss_g"].item()))


def fit(with_monitors: bool, epochs: int = 3):
    L.seed_everything(0, verbose=False)
    data = digits.DigitsDataModule(n_train=32, n_val=64, batch_size=16, passes=2)
    losses = Losses()
    callbacks = [*gan.monitors(probe_size=8, every=1), losses] if with_monitors else [losses]
    trainer = digits.cpu_trainer(epochs, False, callbacks)
    model = gan.DigitsGAN()
    with digits.quiet(1):
        trainer.fit(model, datamodule=data)
    return trainer, model, losses.values, callbacks


def test_the_gan_trains_bit_identically_and_is_measured_at_every_training_epoch_end():
    _, plain, plain_losses, _ = fit(False)
    trainer, watched, watched_losses, callbacks = fit(True)
    assert watched_losses == plain_losses  # exact: the monitors leave no trace on training
    for a, b in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(a, b)
    geometry, recovery, samples = callbacks[:3]
    # no validation_step: measured at the end of every training epoch
    assert geometry.measurements == recovery.measurements == samples.measurements == 3
    for key in gan.KEYS:
        assert math.isfinite(trainer.callback_metrics[key].item()), key


def test_fast_run_prints_the_table(capsys, tmp_path):
    results = gan.main(["--fast", "--log-dir", str(tmp_path)])
    assert set(results) == {"A_32_s0", "B_1400_s0"}
    assert all(r["measured"] > 0 for r in results.values())
    assert results["A_32_s0"]["k"] == 32 and results["B_1400_s0"]["k"] == 256  # equal-size sets
    out = capsys.readouterr().out
    assert "memwatch/recovery/mre_gap" in out and "memwatch/samples/ct" in out
    assert "| near_copies |" in out
    assert any(tmp_path.iterdir())  # the TensorBoard runs went where --log-dir said


def test_the_discriminator_takes_d_steps_steps_per_batch():
    L.seed_everything(0, verbose=False)
    model = gan.DigitsGAN(d_steps=3)
    calls = []
    model.discriminator.register_forward_hook(lambda *args: calls.append(1))
    data = digits.DigitsDataModule(n_train=16, n_val=16, batch_size=16)
    with digits.quiet(1):
        digits.cpu_trainer(1, False, []).fit(model, datamodule=data)
    assert len(calls) == 3 * 2 + 1  # per D step: real and fake; then the generator step
