"""Monitors attach to the models people bring (issue 13): outputs of any usual type, wrapped
models, modules that transform their batch, modules without ``validation_step``."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal
from torch.utils.data import DataLoader, TensorDataset

from lightning_memwatch.callbacks import GeometryMonitor, LikelihoodMonitor, RecoveryMonitor
from lightning_memwatch.callbacks.machinery.adapters import Site, select_output
from lightning_memwatch.functional import jacobian
from tests.conftest import (
    TinyAutoencoder,
    digits_loaders,
    digits_tensors,
    finite_difference_jacobian,
    quiet_trainer,
)

RADII = (0.1, 0.2)
LOG_VOLUME = "memwatch/spectrum/log_volume/train"


class ModelOutput(OrderedDict):
    """A Hugging Face / pythae style output: a dict whose entries are attributes too."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class DecoderOutput:
    reconstruction: torch.Tensor
    kl: torch.Tensor


#: How a decoder may wrap its output batch ``x`` (latents ``z``), and the ``decoder_output``.
WRAPPERS = {
    "tuple": (lambda x, z: (x, x.sum()), None),
    "list": (lambda x, z: [x], None),
    "dict with one tensor": (lambda x, z: {"x_hat": x, "steps": 3}, None),
    "dict by key": (lambda x, z: {"reconstruction": x, "kl": z.square().sum(1)}, "reconstruction"),
    "ModelOutput by key": (lambda x, z: ModelOutput(reconstruction=x, z=z), "reconstruction"),
    "dataclass by key": (lambda x, z: DecoderOutput(x, z.sum(1)), "reconstruction"),
    "distribution": (lambda x, z: Independent(Normal(x, 1.0, validate_args=False), 3), None),
}


class WrappedOutputs(TinyAutoencoder):
    """The tiny autoencoder with ``decode`` / ``encode_output`` returning wrapped outputs; it
    trains exactly as the plain one (training never calls them)."""

    wrap = staticmethod(WRAPPERS["tuple"][0])

    def decode(self, z):
        return self.wrap(self.decoder(z), z)

    def encode_output(self, x):
        z = self.encoder(x)
        return ModelOutput(embedding=z, log_covariance=torch.zeros_like(z))


def build(model_class=None, wrap=None):
    """A fresh model, seeded, so that every run starts from the same weights."""
    L.seed_everything(0, verbose=False)
    model = (model_class or WrappedOutputs)()
    if wrap is not None:
        model.wrap = wrap
    return model


def monitors(decoder="decoder", encoder="encode", **kwargs):
    common = {"decoder": decoder, "encoder": encoder, "probe_size": 8, "max_overhead": math.inf}
    common.update(kwargs)
    geometry = GeometryMonitor(radii=RADII, **common)
    recovery = RecoveryMonitor(steps=3, restarts=1, **common)
    return [geometry, recovery]


def fit(callbacks, model, train=None, val="default", **trainer_kwargs):
    L.seed_everything(0, verbose=False)
    default_train, default_val = digits_loaders()
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=1, **trainer_kwargs)
    val = default_val if val == "default" else val
    trainer.fit(model, default_train if train is None else train, val)
    return trainer


def memwatch_values(trainer):
    return {
        key: value.item()
        for key, value in trainer.callback_metrics.items()
        if key.startswith("memwatch/") and not key.endswith("/seconds")
    }


@pytest.fixture(scope="module")
def plain_values():
    return memwatch_values(fit(monitors(), build()))


@pytest.mark.parametrize("kind", list(WRAPPERS))
def test_decoder_outputs_of_any_usual_type_give_the_plain_tensor_values(kind, plain_values):
    """Before: ``'tuple' object has no attribute 'numel'`` at train start (recovery) or ``no
    attribute 'reshape'`` after an epoch (geometry)."""
    wrap, key = WRAPPERS[kind]
    got = memwatch_values(fit(monitors(decoder="decode", decoder_output=key), build(wrap=wrap)))
    assert got.keys() == plain_values.keys() and "memwatch/density/dip/train" in got
    for name, value in plain_values.items():
        assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), name


def test_likelihood_reads_the_decoder_through_the_same_adapter():
    def likelihood(decoder, output_key=None):
        cb = LikelihoodMonitor(
            decoder=decoder,
            encoder="encode",
            decoder_output=output_key,
            likelihood="bernoulli_probs",
            probe_size=8,
            num_samples=8,
            max_overhead=math.inf,
        )
        return memwatch_values(fit([cb], build(wrap=WRAPPERS["ModelOutput by key"][0])))

    plain, wrapped = likelihood("decoder"), likelihood("decode", "reconstruction")
    assert "memwatch/likelihood/gap" in plain
    for name, value in plain.items():
        assert wrapped[name] == pytest.approx(value, rel=1e-6), name


def test_forward_mode_runs_through_the_adapter():
    """The adapted decoder's Jacobian (vmap over jvp) equals float64 finite differences of the
    plain decoder."""
    torch.manual_seed(0)
    model = WrappedOutputs(batchnorm=False, dropout=0.0).eval()
    model.wrap = WRAPPERS["ModelOutput by key"][0]
    cb = GeometryMonitor(decoder="decode", decoder_output="reconstruction")
    z = torch.randn(3, 4)
    got = jacobian(cb.decoder(model), z).numpy()
    np.testing.assert_allclose(got, finite_difference_jacobian(model.decoder, z), atol=1e-5)


def test_encoder_model_output_read_by_key():
    """Before: ``Expected the encoder to return a (B, m) latent batch ... but got ModelOutput``."""
    cb = GeometryMonitor(
        encoder="encode_output",
        encoder_output="embedding",
        probe_size=8,
        families=("spectrum",),
        max_overhead=math.inf,
    )
    trainer = fit([cb], build())
    reference = GeometryMonitor(
        encoder="encode", probe_size=8, families=("spectrum",), max_overhead=math.inf
    )
    reference_trainer = fit([reference], build())
    key = "memwatch/spectrum/log_volume/gap"
    assert trainer.callback_metrics[key].item() == pytest.approx(
        reference_trainer.callback_metrics[key].item(), rel=1e-6
    )
    assert cb.latent_dim == 4


def test_encoder_model_output_without_a_key_lists_its_entries_before_training():
    model = WrappedOutputs()
    cb = GeometryMonitor(encoder="encode_output", probe_size=8)
    with pytest.raises(ValueError, match=r"'embedding' \(tensor \(2, 4\)\), 'log_covariance'") as e:
        fit([cb], model)
    assert "encoder `encode_output`" in str(e.value) and "pass `encoder_output=`" in str(e.value)
    assert model.losses == []


class MapLatents(WrappedOutputs):
    """An encoder of latent maps ``(B, 1, 2, 2)`` (as a latent diffusion model's autoencoder
    gives), as a tensor or as a distribution over them."""

    def encode_map(self, x):
        return self.encoder(x).view(-1, 1, 2, 2)

    def encode_map_distribution(self, x):
        mean = self.encode_map(x)
        return Independent(Normal(mean, torch.ones_like(mean)), 3)

    def decode_map(self, z):
        return self.decoder(z.flatten(1))

    def decode_conv(self, z):
        """A decoder that starts with a convolution: it takes (B, 1, 2, 2) maps only."""
        return self.decoder(torch.nn.functional.conv2d(z, torch.ones(1, 1, 1, 1)).flatten(1))


@pytest.mark.parametrize("encoder", ["encode_map", "encode_map_distribution"])
def test_latent_maps_attach_as_they_are(encoder, plain_values):
    """Before: "memwatch measures flat latents. Add two module methods..." at train start. The
    maps' flat view is the plain model's latents, so the values are the plain model's."""
    model = build(MapLatents)
    got = memwatch_values(fit(monitors(decoder="decode_map", encoder=encoder), model))
    assert got.keys() == plain_values.keys()
    for name, value in plain_values.items():
        assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), name


def test_a_decoder_of_latent_maps_given_flat_latents_names_latent_dim_as_a_shape():
    model = MapLatents()
    cb = GeometryMonitor(decoder="decode_conv", probe_size=8, latent_dim=4)
    with pytest.raises(ValueError, match=r"could not run the decoder `decode_conv`") as e:
        fit([cb], model)
    assert "Pass `latent_dim=` the latent size the decoder takes (a shape such as" in str(e.value)
    assert "conv2d" in str(e.value)  # torch's own words, as raised
    cb = GeometryMonitor(
        decoder="decode_conv", probe_size=8, latent_dim=(1, 2, 2), max_overhead=math.inf
    )
    assert math.isfinite(fit([cb], MapLatents()).callback_metrics[LOG_VOLUME].item())


def test_decoder_dict_without_a_key_fails_before_training_listing_its_entries():
    model = WrappedOutputs()
    model.wrap = staticmethod(lambda x, z: {"image": x, "kl": z.square().sum(1)})
    with pytest.raises(ValueError, match=r"GeometryMonitor's decoder `decode`.*'kl'") as e:
        fit([GeometryMonitor(decoder="decode", encoder="encode", probe_size=8)], model)
    assert "'image' (tensor (2, 1, 8, 8))" in str(e.value)
    assert "pass `decoder_output=`" in str(e.value)
    assert model.losses == []


@pytest.mark.parametrize(
    ("role", "entries", "preferred"),
    [
        ("decoder", ("commit_loss", "sample"), "sample"),
        ("decoder", ("kl", "reconstruction"), "reconstruction"),
        ("decoder", ("x_hat", "recon"), "recon"),  # the table's order, not the output's
        ("encoder", ("kl", "latent_dist"), "latent_dist"),
        ("encoder", ("logits", "z"), "z"),
    ],
)
def test_an_output_with_several_tensors_gives_its_entry_of_a_usual_name(role, entries, preferred):
    output = ModelOutput((name, torch.full((2, 3), float(i))) for i, name in enumerate(entries))
    site = Site("GeometryMonitor", role, "model.part")
    assert select_output(output, None, site) is output[preferred]
    other = next(name for name in entries if name != preferred)
    assert select_output(output, other, site) is output[other]  # a named entry wins


# ------------------------------------------------------------------------ wrapped models
class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
        self.decoder = nn.Sequential(nn.Linear(4, 64), nn.Unflatten(1, (1, 8, 8)))


class Wrapper(L.LightningModule):
    """A third-party model wrapped in a LightningModule: ``self.model.{encoder,decoder}``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Inner()
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = nn.functional.mse_loss(self.model.decoder(self.model.encoder(x)), x)
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_dotted_attribute_names_reach_a_wrapped_model():
    """Before: ``... has no model.decoder attribute``."""
    cb = GeometryMonitor(
        decoder="model.decoder", encoder="model.encoder", probe_size=8, max_overhead=math.inf
    )
    model = Wrapper()
    trainer = fit([cb], model)
    with torch.no_grad():
        z = model.model.encoder(cb.inputs["train"])
    assert torch.equal(cb.encoder(model)(cb.inputs["train"]), z)
    assert "memwatch/spectrum/log_volume/gap" in trainer.callback_metrics


def test_a_wrong_dotted_name_names_the_object_and_its_submodules():
    with pytest.raises(ValueError, match=r"Wrapper.model has no `generator` \(its submodules: enc"):
        fit([GeometryMonitor(decoder="model.generator", encoder="model.encoder")], Wrapper())


# ------------------------------------------------------------- modules that preprocess
class Flattening(L.LightningModule):
    """Lightning's basic autoencoder: the batch ``(x, y)`` is flattened in ``_prepare_batch``
    before an MLP encoder; the decoder gives flat outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.latent_dim = 3
        self.encoder = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
        self.decoder = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 64))

    def _prepare_batch(self, batch):
        x, _ = batch
        return x.view(x.size(0), -1)

    def training_step(self, batch, batch_idx):
        x = self._prepare_batch(batch)
        return nn.functional.mse_loss(self.decoder(self.encoder(x)), x)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def labelled_loaders():
    train, val = digits_tensors()
    labels = torch.zeros(len(train), dtype=torch.long)
    return (
        DataLoader(TensorDataset(train, labels), batch_size=32),
        DataLoader(TensorDataset(val, labels[: len(val)]), batch_size=32),
    )


def test_samples_the_module_reshapes_fail_before_training_naming_preprocess():
    """Before: a raw ``mat1 and mat2 shapes cannot be multiplied`` with no word of memwatch."""
    train, val = labelled_loaders()
    with pytest.raises(
        ValueError, match=r"encoder `encoder` on 2 training probe samples of shape"
    ) as e:
        fit([GeometryMonitor(encoder="encoder", probe_size=8)], Flattening(), train, val)
    message = str(e.value)
    assert "(1, 8, 8)" in message and "mat1 and mat2" in message
    assert "pass `preprocess=`" in message and "`input_key=`" in message


def test_preprocess_turns_a_batch_of_probe_samples_into_the_model_inputs():
    train, val = labelled_loaders()
    cbs = monitors(decoder="decoder", encoder="encoder", preprocess="_prepare_batch")
    trainer = fit(cbs, Flattening(), train, val)
    images = {"train": train.dataset.tensors[0], "val": val.dataset.tensors[0]}
    for cb in cbs:
        for split in ("train", "val"):
            expected = images[split][cb.indices[split]].flatten(1)
            assert torch.equal(cb.inputs[split], expected)
    assert "memwatch/recovery/mre_gap" in trainer.callback_metrics
    assert "memwatch/density/decay/gap" in trainer.callback_metrics


# ------------------------------------------------------------- no validation step
class GAN(L.LightningModule):
    """Lightning's GAN template, shrunk: ``self.generator``, manual optimization, no
    ``validation_step``."""

    def __init__(self, latent_dim: int = 5) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.automatic_optimization = False
        self.generator = nn.Sequential(
            nn.Linear(latent_dim, 32), nn.Tanh(), nn.Linear(32, 64), nn.Unflatten(1, (1, 8, 8))
        )
        self.discriminator = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(len(x), self.latent_dim)
        bce = nn.functional.binary_cross_entropy_with_logits
        fake = self.discriminator(self.generator(z))
        g_loss = bce(fake, torch.ones_like(fake))
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        real, fake = self.discriminator(x), self.discriminator(self.generator(z).detach())
        d_loss = bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.losses.append(g_loss.item())

    def configure_optimizers(self):
        return (
            torch.optim.Adam(self.generator.parameters(), lr=1e-3),
            torch.optim.Adam(self.discriminator.parameters(), lr=1e-3),
        )


class Digits(L.LightningDataModule):
    def train_dataloader(self):
        return digits_loaders(shuffle=False)[0]

    def val_dataloader(self):
        return digits_loaders()[1]


@pytest.mark.parametrize("trainer_kwargs", [{}, {"limit_val_batches": 0}])
def test_probes_are_drawn_from_val_dataloader_without_validation_step(trainer_kwargs):
    """Before: ``Expected validation data ... but the trainer has none`` although the datamodule
    defines ``val_dataloader``: Lightning skips its val loop without ``validation_step`` (or with
    ``limit_val_batches=0``); the held-out probe comes from ``val_dataloader()``."""
    cbs = [
        GeometryMonitor(decoder="generator", probe_size=8, max_overhead=math.inf),
        RecoveryMonitor(decoder="generator", probe_size=8, steps=2, restarts=1),
    ]
    model = GAN()
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=cbs, max_epochs=1, **trainer_kwargs)
    trainer.fit(model, datamodule=Digits())
    train, val = digits_tensors()
    for cb in cbs:
        assert cb.latent_dim == 5
        assert torch.equal(cb.inputs["train"], train[cb.indices["train"]])
        assert torch.equal(cb.inputs["val"], val[cb.indices["val"]])
    assert len(model.losses) == 3


def test_val_dataloaders_passed_to_fit_serve_a_module_without_validation_step():
    cb = GeometryMonitor(decoder="generator", probe_size=8)
    train, val = digits_loaders()
    L.seed_everything(0, verbose=False)
    quiet_trainer(callbacks=[cb], max_epochs=1).fit(GAN(), train, val)
    assert torch.equal(cb.inputs["val"], digits_tensors()[1][cb.indices["val"]])


def test_no_held_out_data_at_all_fails_at_setup_saying_so():
    model = GAN()
    trainer = quiet_trainer(callbacks=[GeometryMonitor(decoder="generator")], max_epochs=1)
    with pytest.raises(ValueError, match=r"held-out data for GeometryMonitor's validation probe"):
        trainer.fit(model, digits_loaders()[0])
    assert model.losses == []
