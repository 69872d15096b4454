"""Latent maps ``(B, 4, 2, 2)`` attach with no glue (issue 22): every monitor measures a model
whose encoder gives latent maps and whose decoder takes them, and logs the numbers of its
flat-latent twin (the same weights, with the two reshaping methods that were needed before).
The reshape keeps every coordinate in place, so the values agree to float tolerance; the twin's
own values are checked against independent references by the other test files."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.distributions import Independent, Normal
from torch.utils.data import TensorDataset

from lightning_memwatch import (
    GeometryMonitor,
    LikelihoodMonitor,
    RecoveryMonitor,
    SampleMonitor,
    kfold_memorization_scores,
)
from tests.conftest import digits_loaders, digits_tensors, quiet_trainer, read_events

MAP = (4, 2, 2)
RADII = (0.1, 0.2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class MapAutoencoder(L.LightningModule):
    """A small VAE on 8 x 8 digits with ``(4, 2, 2)`` latent maps: two stride-2 convolutions to
    mean and log-variance maps, and a convolutional decoder (1 x 1 convolution, two
    nearest-neighbour upsamplings, 3 x 3 convolutions, a sigmoid). BatchNorm in the decoder, so
    that a monitor that changed training would show it."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(8, 2 * MAP[0], 3, stride=2, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(MAP[0], 8, 1),
            nn.BatchNorm2d(8),
            nn.Tanh(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Tanh(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(8, 1, 3, padding=1),
            nn.Sigmoid(),
        )
        self.losses: list[float] = []

    #: whether training draws ``z`` from ``q(z|x)`` (global RNG) or takes its mean
    sample = True

    def encode(self, x):
        """``q(z|x)`` over ``(B, 4, 2, 2)`` maps."""
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return Independent(Normal(mean, (0.5 * log_var).exp()), 3)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        q = self.encode(x).base_dist
        z = q.rsample() if self.sample else q.loc
        kl = 0.5 * (q.loc.square() + q.scale.square() - 2 * q.scale.log() - 1).flatten(1).sum(1)
        loss = nn.functional.mse_loss(self.decoder(z), x) + 1e-3 * kl.mean()
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class FlatTwin(MapAutoencoder):
    """The same model with the two glue methods a flat-latent monitor needed: ``encode_flat``
    (the posterior over flat latents) and ``decode_flat`` (reshape, then decode)."""

    def encode_flat(self, x):
        q = self.encode(x).base_dist
        return Independent(Normal(q.loc.flatten(1), q.scale.flatten(1)), 1)

    def decode_flat(self, z):
        return self.decoder(z.view(-1, *MAP))


def fit(callbacks, model_class=MapAutoencoder, max_epochs=1, ckpt_path=None, **trainer_kwargs):
    L.seed_everything(0, verbose=False)
    model = model_class()
    train, val = digits_loaders(shuffle=False)
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=max_epochs, **trainer_kwargs)
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return trainer, model


def memwatch_values(trainer) -> dict[str, float]:
    return {
        key: value.item()
        for key, value in trainer.callback_metrics.items()
        if key.startswith("memwatch/") and not key.endswith("/seconds")
    }


COMMON = {"probe_size": 8, "max_overhead": math.inf}
#: (map model's monitors, flat twin's monitors) per case: the same settings, the twin through
#: its glue methods and a flat ``latent_dim``.
CASES = {
    "geometry spectrum and density": (
        lambda: [GeometryMonitor(encoder="encode", radii=RADII, **COMMON)],
        lambda: [
            GeometryMonitor(decoder="decode_flat", encoder="encode_flat", radii=RADII, **COMMON)
        ],
    ),
    "geometry without an encoder": (
        lambda: [GeometryMonitor(latent_dim=MAP, families=("spectrum",), **COMMON)],
        lambda: [
            GeometryMonitor(decoder="decode_flat", latent_dim=16, families=("spectrum",), **COMMON)
        ],
    ),
    "recovery with an encoder": (
        lambda: [RecoveryMonitor(encoder="encode", steps=3, warm_steps=2, **COMMON)],
        lambda: [
            RecoveryMonitor(
                decoder="decode_flat", encoder="encode_flat", steps=3, warm_steps=2, **COMMON
            )
        ],
    ),
    "recovery without an encoder": (
        lambda: [RecoveryMonitor(latent_dim=list(MAP), steps=3, restarts=1, **COMMON)],
        lambda: [
            RecoveryMonitor(decoder="decode_flat", latent_dim=16, steps=3, restarts=1, **COMMON)
        ],
    ),
    "likelihood": (
        lambda: [LikelihoodMonitor(encoder="encode", num_samples=8, **COMMON)],
        lambda: [
            LikelihoodMonitor(decoder="decode_flat", encoder="encode_flat", num_samples=8, **COMMON)
        ],
    ),
    "samples": (
        lambda: [SampleMonitor(latent_dim=MAP, reference_size=64, num_generated=64, **COMMON)],
        lambda: [
            SampleMonitor(
                decoder="decode_flat", latent_dim=16, reference_size=64, num_generated=64, **COMMON
            )
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_latent_maps_give_the_numbers_of_the_flat_twin(case):
    """Before: every monitor stopped at train start ("memwatch measures flat latents. Add two
    module methods...")."""
    make_map, make_flat = CASES[case]
    map_monitors, flat_monitors = make_map(), make_flat()
    got = memwatch_values(fit(map_monitors)[0])
    want = memwatch_values(fit(flat_monitors, FlatTwin)[0])
    assert got.keys() == want.keys() and len(got) >= 5
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7, nan_ok=True), key
    assert all(m.latent_shape == MAP and m.latent_dim == 16 for m in map_monitors)
    assert all(m.latent_shape == (16,) for m in flat_monitors)


def test_training_with_the_monitors_on_latent_maps_is_bit_identical():
    monitors = [*CASES["geometry spectrum and density"][0](), *CASES["likelihood"][0]()]
    _, watched = fit(monitors, max_epochs=2)
    _, plain = fit([], max_epochs=2)
    assert watched.losses == plain.losses and len(plain.losses) == 6


def test_resume_keeps_the_recorded_latent_shape(tmp_path):
    """The shape is in the monitor's state: a resumed monitor without an encoder decodes at the
    recorded shape, and logs what the uninterrupted run logs."""

    class Deterministic(MapAutoencoder):  # the global RNG is not in a checkpoint
        sample = False

    def run(ckpt_path=None):
        cb = GeometryMonitor(latent_dim=MAP, families=("spectrum",), **COMMON)
        checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
        callbacks = [cb, checkpoints]
        trainer, _ = fit(callbacks, Deterministic, 3, ckpt_path, enable_checkpointing=True)
        return trainer, cb

    whole, cb_whole = run()
    state = torch.load(tmp_path / "epoch=1-step=6.ckpt", weights_only=False)["callbacks"]
    saved = next(value for key, value in state.items() if key.startswith("GeometryMonitor"))
    assert saved["latent_shape"] == MAP and saved["latent_dim"] == 16
    fresh = GeometryMonitor(families=("spectrum",), **COMMON)  # no latent_dim, no encoder
    fresh.load_state_dict(saved)
    assert fresh.latent_shape == MAP and fresh.latent_dim == 16
    resumed, cb_resumed = run(ckpt_path=str(tmp_path / "epoch=1-step=6.ckpt"))
    assert cb_resumed.latent_shape == MAP
    for key in cb_whole.logged_keys - {"memwatch/spectrum/seconds"}:
        a, b = whole.callback_metrics[key].item(), resumed.callback_metrics[key].item()
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9, nan_ok=True), key


def test_a_module_latent_dim_may_be_a_shape():
    """Without an encoder and ``latent_dim=``, the module's ``latent_dim`` attribute (here a
    tuple) gives the shape, as an integer one gives ``m``."""

    class WithShape(MapAutoencoder):
        latent_dim = MAP

    cb = RecoveryMonitor(steps=2, restarts=1, **COMMON)
    trainer, _ = fit([cb], WithShape)
    assert cb.latent_shape == MAP and cb.latent_dim == 16
    assert math.isfinite(trainer.callback_metrics["memwatch/recovery/mre/train"].item())


def test_latent_dim_that_disagrees_with_the_encoder_names_both_shapes():
    cb = GeometryMonitor(encoder="encode", latent_dim=(2, 4, 2), **COMMON)
    with pytest.raises(ValueError, match=r"`latent_dim=\(2, 4, 2\)`.*gives \(4, 2, 2\)") as e:
        fit([cb])
    assert "pass `latent_dim=(4, 2, 2)` or none" in str(e.value)
    # an integer latent_dim is the count of the latents, whatever their shape
    counted = GeometryMonitor(encoder="encode", latent_dim=16, families=("spectrum",), **COMMON)
    fit([counted])
    assert counted.latent_shape == MAP


def test_a_shape_for_an_encoder_of_flat_latents_is_the_decoders():
    """An encoder of flat latents and a decoder of maps: ``latent_dim=(4, 2, 2)`` says how the
    decoder takes the encoder's 16 values; the numbers are the flat twin's."""

    class FlatEncoder(MapAutoencoder):
        def encode_flat(self, x):
            return self.encode(x).mean.flatten(1)

    options = {"families": ("spectrum",), **COMMON}
    cb = GeometryMonitor(encoder="encode_flat", latent_dim=MAP, **options)
    got = memwatch_values(fit([cb], FlatEncoder)[0])
    assert cb.latent_shape == MAP
    twin = GeometryMonitor(decoder="decode_flat", encoder="encode_flat", **options)
    want = memwatch_values(fit([twin], FlatTwin)[0])
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("bad", [(4, 0, 2), (), 2.0, (4, 2.0)])
def test_latent_dim_must_be_a_positive_integer_or_a_shape(bad):
    with pytest.raises(ValueError, match="Expected `latent_dim` to be a positive integer"):
        GeometryMonitor(latent_dim=bad)


def test_kfold_scores_of_latent_maps_equal_the_flat_twins():
    """``kfold_memorization_scores`` records the encoder's latent shape per fold model, so the
    map model's scores are its flat twin's."""
    train, _ = digits_tensors(n_train=24)
    data = TensorDataset(train)
    options = {"k": 2, "num_samples": 4, "batch_size": 12, "trainer_kwargs": {"max_epochs": 1}}
    got = kfold_memorization_scores(MapAutoencoder, data, encoder="encode", **options)
    want = kfold_memorization_scores(
        FlatTwin, data, encoder="encode_flat", decoder="decode_flat", **options
    )
    assert torch.isfinite(want.scores).all()
    torch.testing.assert_close(got.log_px, want.log_px, rtol=1e-6, atol=1e-6)


def test_density_paths_and_lines_on_latent_maps_are_the_flat_twins(tmp_path):
    """The figures a ``validate`` draws (the dip paths through the decoder, their decoded
    images, the decay lines, the mean spectrum) are the flat twin's, byte for byte."""
    from lightning.pytorch.loggers import TensorBoardLogger

    images = {}
    for name, model_class, parts in (
        ("map", MapAutoencoder, {"encoder": "encode"}),
        ("flat", FlatTwin, {"decoder": "decode_flat", "encoder": "encode_flat"}),
    ):
        logger = TensorBoardLogger(tmp_path, name=name)
        cb = GeometryMonitor(radii=RADII, **parts, **COMMON)
        trainer, model = fit([cb], model_class, logger=logger)
        trainer.validate(model, digits_loaders(shuffle=False)[1], verbose=False)
        events = read_events(logger.log_dir)
        images[name] = {
            tag: events.Images(tag)[-1].encoded_image_string for tag in events.Tags()["images"]
        }
    assert "memwatch/density/dip_path_images" in images["map"]
    assert images["map"].keys() == images["flat"].keys() and len(images["map"]) >= 4
    for tag, png in images["flat"].items():
        assert images["map"][tag] == png, tag
