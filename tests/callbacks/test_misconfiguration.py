"""Bad configuration fails before training steps, with a message that names the fix."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from lightning_memwatch.callbacks import GeometryMonitor, RecoveryMonitor
from tests.conftest import digits_loaders, digits_tensors, make_autoencoder, quiet_trainer


class Stream(IterableDataset):
    def __iter__(self):
        train, _ = digits_tensors()
        yield from ((x,) for x in train)


def fit(cb, model=None, train=None, val="default"):
    default_train, default_val = digits_loaders()
    trainer = quiet_trainer(callbacks=[cb], max_epochs=1)
    val = default_val if val == "default" else val
    trainer.fit(model or make_autoencoder(), default_train if train is None else train, val)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"max_overhead": 0.0}, r"max_overhead.*positive"),
        ({"max_overhead": float("nan")}, r"max_overhead.*positive"),
        ({"families": ("spectrum", "likelihood")}, "families"),
        ({"families": "spectrum"}, "families"),
        ({"probe_size": 0}, "probe_size"),
        ({"radii": (0.5, -1.0)}, "radii"),
        ({"input_key": 1.5}, "input_key"),
        ({"decoder": ""}, "decoder"),
        ({"latent_dim": -3}, "latent_dim"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeometryMonitor(**kwargs)


def test_missing_decoder_attribute():
    with pytest.raises(ValueError, match=r"`generator` attribute.*pass `decoder=`"):
        fit(GeometryMonitor(decoder="generator", encoder="encode"))


def test_encoder_that_is_not_callable():
    model = make_autoencoder()
    model.code_size = 4
    with pytest.raises(ValueError, match=r"code_size.*callable.*name a module or a method"):
        fit(GeometryMonitor(encoder="code_size"), model=model)


def test_unknown_latent_size():
    model = make_autoencoder()
    model.hparams.pop("latent_dim")
    with pytest.raises(ValueError, match="pass `latent_dim=`"):
        fit(GeometryMonitor(), model=model)


def test_probe_larger_than_the_dataset():
    with pytest.raises(ValueError, match=r"at most the training dataset's size \(96\).*smaller"):
        fit(GeometryMonitor(encoder="encode", probe_size=500))


def test_iterable_dataset():
    with pytest.raises(ValueError, match=r"map-style dataset.*TensorDataset"):
        fit(GeometryMonitor(encoder="encode"), train=DataLoader(Stream(), batch_size=16))


def test_no_validation_data():
    with pytest.raises(ValueError, match=r"validation data.*val_dataloaders"):
        fit(GeometryMonitor(encoder="encode"), val=None)


def test_bad_input_key():
    with pytest.raises(ValueError, match=r"input_key=3.*tuple index or dict key"):
        fit(GeometryMonitor(encoder="encode", input_key=3))


def test_dict_samples_with_a_key():
    """The positive case of input_key: dict samples picked by key."""

    class Dicts(torch.utils.data.Dataset):
        def __init__(self, tensors):
            self.tensors = tensors

        def __len__(self):
            return len(self.tensors)

        def __getitem__(self, i):
            return {"image": self.tensors[i], "label": 0}

    class DictModel(type(make_autoencoder())):
        def training_step(self, batch, batch_idx):
            return super().training_step((batch["image"],), batch_idx)

        def validation_step(self, batch, batch_idx):
            return super().validation_step((batch["image"],), batch_idx)

    train, val = digits_tensors()
    cb = GeometryMonitor(encoder="encode", input_key="image", probe_size=8, families=("spectrum",))
    trainer = quiet_trainer(callbacks=[cb], max_epochs=1)
    L.seed_everything(0, verbose=False)
    trainer.fit(DictModel(), DataLoader(Dicts(train), 16), DataLoader(Dicts(val), 16))
    assert torch.equal(cb.inputs["train"], train[cb.indices["train"]])
    assert "memwatch/spectrum/log_volume/train" in trainer.callback_metrics


def test_without_encoder_uses_the_latent_dim_hyperparameter():
    cb = GeometryMonitor()
    cb.setup(quiet_trainer(), make_autoencoder(latent_dim=5), "validate")
    assert cb.latent_dim == 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, r"`encoder` when `steps` or `restarts` is 0"),
        ({"restarts": 0}, r"`encoder` when `steps` or `restarts` is 0"),
        ({"steps": -1, "encoder": "encode"}, "steps"),
        ({"restarts": 1.5}, "restarts"),
        ({"probe_size": 0}, "probe_size"),
    ],
)
def test_recovery_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RecoveryMonitor(**kwargs)


def test_recovery_decoder_whose_outputs_do_not_match_the_inputs():
    model = make_autoencoder()
    model.half_decoder = lambda z: model.decoder(z)[..., :4]
    with pytest.raises(ValueError, match=r"as many values per sample as an input has.*\(1, 8, 4\)"):
        fit(RecoveryMonitor(decoder="half_decoder", encoder="encode"), model=model)


def test_recovery_missing_decoder_attribute():
    with pytest.raises(ValueError, match=r"`generator` attribute.*pass `decoder=`"):
        fit(RecoveryMonitor(decoder="generator", encoder="encode"))
