"""``decoder="auto"`` / ``encoder="auto"`` (issue 24): one snippet attaches to the module shapes
people have, through real fits: the demo's VAE (an ``encode()`` method and a ``decoder``
submodule) and an ordinary conv autoencoder (``self.encoder`` / ``self.decoder`` submodules).
The values equal those of the explicitly named attributes; the choice is logged at info level;
a module without a decoder fails listing what it has."""

from __future__ import annotations

import logging
import math

import lightning as L
import pytest
import torch
from torch import nn

from lightning_memwatch import GeometryMonitor, LikelihoodMonitor, RecoveryMonitor
from lightning_memwatch.callbacks.machinery.naming import auto_attribute
from tests.conftest import digits_loaders, quiet_trainer
from tests.examples.conftest import load_example

COMMON = {"probe_size": 8, "max_overhead": math.inf}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class ConvAutoencoder(L.LightningModule):
    """An ordinary conv autoencoder on 8 x 8 digits: ``self.encoder`` and ``self.decoder``
    submodules, no ``encode`` / ``decode`` methods."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 6),
        )
        self.decoder = nn.Sequential(
            nn.Linear(6, 8 * 4 * 4),
            nn.ReLU(),
            nn.Unflatten(1, (8, 4, 4)),
            nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return nn.functional.mse_loss(self.decoder(self.encoder(x)), x)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def digits_vae():
    return load_example("digits_vae").DigitsVAE(hidden=32)


def fit(callbacks, build):
    L.seed_everything(0, verbose=False)
    model = build()
    train, val = digits_loaders()
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=1)
    trainer.fit(model, train, val)
    return {
        key: value.item()
        for key, value in trainer.callback_metrics.items()
        if key.startswith("memwatch/") and not key.endswith("/seconds")
    }


def monitors(decoder, encoder):
    common = {"decoder": decoder, "encoder": encoder, **COMMON}
    return [
        GeometryMonitor(**common, families=("spectrum",)),
        RecoveryMonitor(**common, steps=2, warm_steps=2),
    ]


@pytest.mark.parametrize(
    ("build", "names"),
    [(digits_vae, ("decoder", "encode")), (ConvAutoencoder, ("decoder", "encoder"))],
    ids=["demo VAE: encode() and a decoder", "conv autoencoder: encoder and decoder"],
)
def test_auto_attaches_to_both_module_shapes_as_the_named_attributes(build, names, caplog):
    """Before: the README snippet (``encoder="encode"``) stopped on the conv autoencoder."""
    with caplog.at_level(logging.INFO):
        auto = monitors("auto", "auto")
        got = fit(auto, build)
    assert [(m.decoder_name, m.encoder_name) for m in auto] == [names, names]
    want = fit(monitors(*names), build)
    assert got.keys() == want.keys() and "memwatch/recovery/mre_gap" in got
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), key
    decoder, encoder = names
    logged = caplog.text
    assert f"GeometryMonitor(decoder='auto') uses `{decoder}`" in logged
    assert f"GeometryMonitor(encoder='auto') uses `{encoder}`" in logged
    assert "the first of `encode`, `encoder` that" in logged
    assert all(m.decoder_argument == "auto" for m in auto)  # the state key is the argument's


def test_auto_without_an_encoder_recovers_the_latents_and_says_so(caplog):
    class DecoderOnly(ConvAutoencoder):
        latent_dim = 6

        def __init__(self) -> None:
            super().__init__()
            self.generator = self.decoder
            del self.encoder, self.decoder

        def training_step(self, batch, batch_idx):
            return self.generator(torch.zeros(1, 6)).mean()

    cb = RecoveryMonitor(decoder="auto", encoder="auto", steps=2, restarts=1, **COMMON)
    with caplog.at_level(logging.INFO):
        values = fit([cb], DecoderOnly)
    assert (cb.decoder_name, cb.encoder_name) == ("generator", None)
    assert math.isfinite(values["memwatch/recovery/mre/train"])
    assert "RecoveryMonitor(encoder='auto') measures without an encoder" in caplog.text
    assert "latent recovery" in caplog.text


def test_auto_without_a_decoder_lists_the_submodules_and_methods():
    class Odd(ConvAutoencoder):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = self.decoder
            del self.decoder

        def render(self, z):
            return self.backbone(z)

    with pytest.raises(ValueError, match=r"one of `decode`, `decoder`, `generator`") as e:
        fit([GeometryMonitor(decoder="auto", **COMMON)], Odd)
    message = str(e.value)
    assert "GeometryMonitor(decoder='auto')" in message and "Odd has none" in message
    assert "its submodules: encoder, backbone" in message and "its methods: render" in message


def test_likelihood_needs_what_auto_finds_for_its_encoder():
    class NoEncoder(ConvAutoencoder):
        def __init__(self) -> None:
            super().__init__()
            self.features = self.encoder
            del self.encoder

    with pytest.raises(ValueError, match=r"LikelihoodMonitor\(encoder='auto'\) but NoEncoder"):
        fit([LikelihoodMonitor(encoder="auto", **COMMON)], NoEncoder)


def test_auto_picks_the_first_usual_name_and_says_what_else_there_is():
    model = digits_vae()
    model.decode = model.decoder
    name, why = auto_attribute(model, "decoder", "GeometryMonitor")
    assert name == "decode" and "(it also has `decoder`)" in why


def test_a_missing_attribute_suggests_auto():
    with pytest.raises(ValueError, match="has no `encode`") as e:
        fit([GeometryMonitor(encoder="encode", **COMMON)], ConvAutoencoder)
    assert "its submodules: encoder, decoder" in str(e.value)
    assert "`encoder='auto'` for the first of `encode`, `encoder`" in str(e.value)
