"""The DCGAN example at latent 100 -> 1 x 28 x 28: end to end in seconds, monitors attached."""

from __future__ import annotations

import math

import torch

from tests.examples.conftest import load_example

dcgan = load_example("dcgan_digits")
report = load_example("generator_report")


def test_generator_and_discriminator_shapes():
    generator, discriminator = dcgan.DCGANGenerator(100, 16), dcgan.DCGANDiscriminator(8)
    images = generator(torch.randn(3, 100))
    assert images.shape == (3, 1, 28, 28)
    assert images.min() >= 0 and images.max() <= 1
    assert discriminator(images).shape == (3, 1)


def test_upsampled_digits_keep_the_split_and_the_range():
    data = report.UpsampledDigits(28, n_train=10, n_val=5, seed=0)
    small = load_example("digits_vae").DigitsDataModule(n_train=10, n_val=5, seed=0)
    assert data.train_images.shape == (10, 1, 28, 28) and data.val_images.shape == (5, 1, 28, 28)
    assert 0 <= data.train_images.min() and data.train_images.max() <= 1
    # bilinear resizing keeps the mean of each image up to the border: the same digits
    means = data.train_images.mean(dim=(1, 2, 3))
    assert torch.allclose(means, small.train_images.mean(dim=(1, 2, 3)), atol=0.02)


def test_fast_run_measures_finite_keys_and_prints_the_table(capsys, tmp_path):
    values = dcgan.main(["--fast", "--log-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| memwatch/spectrum/log_volume |" in out and "fit-time ratio" in out
    assert values["measurements"] == 2  # 2 epochs, every epoch, at training-epoch ends
    for key in (
        "memwatch/spectrum/log_volume/train",
        "memwatch/spectrum/log_volume/val",
        "memwatch/spectrum/log_volume/gap",
        "memwatch/density/dip/gap",
        "memwatch/recovery/mre_gap",
        "memwatch/recovery/ks_pvalue",
        "memwatch/spectrum/seconds",
        "memwatch/density/seconds",
    ):
        assert math.isfinite(values[key]), key
    assert values["memwatch/spectrum/intrinsic_dim/train"] <= 32  # top_k=32 of m = 100
    assert values["fit_ratio"] > 0


def test_the_monitors_leave_the_dcgan_training_bit_identical():
    def data():
        return report.UpsampledDigits(28, n_train=32, n_val=32, batch_size=16)

    def model():
        return dcgan.DigitsDCGAN(width=8)

    with load_example("digits_vae").quiet(1):
        plain, _ = report.timed_fit(model, data, 1, [], seed=0)
        watched, _ = report.timed_fit(model, data, 1, dcgan.monitors(4, 1), seed=0)
    a, b = plain.lightning_module.state_dict(), watched.lightning_module.state_dict()
    assert a.keys() == b.keys()
    for key in a:  # BatchNorm running statistics included
        assert torch.equal(a[key], b[key]), key
