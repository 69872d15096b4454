"""Bad configuration fails before training steps, with a message that names the fix."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from lightning_memwatch.callbacks import GeometryMonitor, LikelihoodMonitor, RecoveryMonitor
from tests.attention_decoders import Square
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


def test_fewer_than_two_distinct_training_samples():
    """A probe larger than the data takes what there is (tests/callbacks/test_small_data.py);
    below two distinct samples per split there is nothing to compare."""
    one = digits_tensors()[0][:1]
    train = DataLoader(TensorDataset(one.repeat(8, 1, 1, 1)), batch_size=4)
    with pytest.raises(
        ValueError, match=r"at least 2 distinct training samples for Geom.*hold only 1"
    ):
        fit(GeometryMonitor(encoder="encode"), train=train)


def test_iterable_dataset():
    with pytest.raises(ValueError, match=r"map-style dataset.*TensorDataset"):
        fit(GeometryMonitor(encoder="encode"), train=DataLoader(Stream(), batch_size=16))


def test_no_validation_data():
    with pytest.raises(ValueError, match=r"held-out data for GeometryMonitor.*`val_dataloaders=`"):
        fit(GeometryMonitor(encoder="encode"), val=None)


@pytest.mark.parametrize(
    ("val", "match"),
    [
        (digits_loaders(n_val=1)[1], r"at least 2 distinct validation samples.*yields 1 sample:"),
        (DataLoader(Stream(), batch_size=16), r"validation dataloader to wrap a map-style"),
    ],
)
def test_validation_data_is_checked_before_training_when_validation_starts_late(val, match):
    """Before: with ``check_val_every_n_epoch=2`` and no sanity check the validation probe was
    drawn (and checked) only after the first validating epoch."""
    model = make_autoencoder()
    trainer = quiet_trainer(
        callbacks=[GeometryMonitor(encoder="encode", probe_size=12)],
        max_epochs=2,
        check_val_every_n_epoch=2,
        num_sanity_val_steps=0,
    )
    with pytest.raises(ValueError, match=match):
        trainer.fit(model, digits_loaders()[0], val)
    assert model.losses == []


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
    cb = GeometryMonitor(
        encoder="encode",
        input_key="image",
        probe_size=8,
        families=("spectrum",),
        max_overhead=math.inf,  # a one-epoch run affords no measurement at 5 %
    )
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


@pytest.mark.parametrize("monitor_class", [RecoveryMonitor, GeometryMonitor])
def test_decoder_whose_outputs_do_not_match_the_inputs(monitor_class):
    """Before: GeometryMonitor found out only at the first validation end, after an epoch."""
    model = make_autoencoder()
    model.half_decoder = lambda z: model.decoder(z)[..., :4]
    with pytest.raises(ValueError, match=r"as many values per sample as an input has.*\(1, 8, 4\)"):
        fit(monitor_class(decoder="half_decoder", encoder="encode"), model=model)
    assert model.losses == []


def test_recovery_missing_decoder_attribute():
    with pytest.raises(ValueError, match=r"`generator` attribute.*pass `decoder=`"):
        fit(RecoveryMonitor(decoder="generator", encoder="encode"))


# ------------------------------------------------- raw errors at train start (issue 14 item 9)
def loaders_of(train, val, batch_size=32):
    return DataLoader(train, batch_size=batch_size), DataLoader(val, batch_size=batch_size)


class Converting(type(make_autoencoder())):
    """Converts its batch to float32 (as a module for uint8 or float64 data does)."""

    def training_step(self, batch, batch_idx):
        return super().training_step((self.convert(batch[0]),), batch_idx)

    def validation_step(self, batch, batch_idx):
        pass

    @staticmethod
    def convert(x):
        return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def test_uint8_images_fail_naming_preprocess():
    train, val = digits_tensors()
    to_uint8 = lambda x: (x * 255).to(torch.uint8)  # noqa: E731
    data = loaders_of(TensorDataset(to_uint8(train)), TensorDataset(to_uint8(val)))
    model = Converting()
    with pytest.raises(
        ValueError, match=r"inputs to be floating-point.*torch.uint8.*`preprocess=`"
    ):
        fit(GeometryMonitor(encoder="encode"), model, *data)
    assert model.losses == []


def test_float64_data_against_a_float32_model_is_cast():
    train, val = digits_tensors()
    data = loaders_of(TensorDataset(train.double()), TensorDataset(val.double()))
    cb = GeometryMonitor(encoder="encode", probe_size=8, families=("spectrum",))
    fit(cb, Converting(), *data)
    assert cb.inputs["train"].dtype == torch.float32
    assert torch.equal(cb.inputs["train"], train[cb.indices["train"]])


class Bare(Dataset):
    """Samples that are bare tensors (or numpy arrays), not tuples."""

    def __init__(self, images, numpy=False):
        self.images, self.numpy = images, numpy

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].numpy() if self.numpy else self.images[i]


class BareModel(type(make_autoencoder())):
    def training_step(self, batch, batch_idx):
        return super().training_step((batch,), batch_idx)

    def validation_step(self, batch, batch_idx):
        pass


def test_bare_tensor_samples_with_the_default_input_key_fail_naming_input_key_none():
    """Before: ``input_key=0`` silently took row 0 of each sample."""
    train, val = digits_tensors()
    with pytest.raises(ValueError, match=r"samples are tensors \(\(1, 8, 8\)\).*`input_key=None`"):
        fit(GeometryMonitor(encoder="encode"), BareModel(), *loaders_of(Bare(train), Bare(val)))


@pytest.mark.parametrize("numpy", [False, True])
def test_bare_samples_with_input_key_none(numpy):
    """numpy samples: before, the message said to pass a tuple index (the wrong fix)."""
    train, val = digits_tensors()
    data = loaders_of(Bare(train, numpy), Bare(val, numpy))
    cb = GeometryMonitor(encoder="encode", input_key=None, probe_size=8, families=("spectrum",))
    fit(cb, BareModel(), *data)
    assert torch.equal(cb.inputs["val"], val[cb.indices["val"]])


# ----------------------------------------------- the model run once at train start (item 7)
def test_a_latent_dim_the_decoder_does_not_take():
    model = make_autoencoder(latent_dim=4)
    with pytest.raises(
        ValueError, match=r"decoder `decoder` on a \(2, 6\) latent batch.*`latent_dim=`"
    ):
        fit(GeometryMonitor(latent_dim=6), model=model)
    assert model.losses == []


def test_a_latent_dim_that_disagrees_with_the_encoder():
    with pytest.raises(ValueError, match=r"`latent_dim=6`.*encoder `encode` but it gives 4"):
        fit(GeometryMonitor(encoder="encode", latent_dim=6))


def test_a_decoder_with_extra_required_arguments():
    model = make_autoencoder()
    model.conditional = lambda z, labels: model.decoder(z)
    with pytest.raises(
        ValueError, match=r"decoder `conditional` to take the latent batch alone.*labels"
    ):
        fit(RecoveryMonitor(decoder="conditional", encoder="encode"), model=model)


def test_a_decoder_that_loses_the_batch_dimension():
    model = make_autoencoder()
    model.first = lambda z: model.decoder(z)[0]
    with pytest.raises(ValueError, match=r"batch of 2 outputs for 2 latents.*\(1, 8, 8\)"):
        fit(GeometryMonitor(decoder="first", encoder="encode"), model=model)


class SquareWithoutDerivatives(torch.autograd.Function):
    """A custom autograd Function with neither a backward nor a forward-mode rule."""

    @staticmethod
    def forward(ctx, x):
        return x * x


def test_a_custom_autograd_function_without_any_derivative_fails_saying_so():
    """Forward mode fails, and so does the reverse-mode fallback (a Function with a backward
    and no forward-mode rule is measured: tests/functional/test_autodiff.py)."""
    model = make_autoencoder()
    model.custom = lambda z: SquareWithoutDerivatives.apply(model.decoder(z))
    with pytest.raises(
        ValueError, match=r"differentiating the decoder `custom`.*failed both ways.*`backward`"
    ) as e:
        fit(GeometryMonitor(decoder="custom", encoder="encode"), model=model)
    assert "out of `families`" in str(e.value)
    assert model.losses == []
    # latent recovery differentiates in reverse mode only: the same decoder is fine there
    cb = RecoveryMonitor(decoder="custom", encoder="encode", probe_size=8, steps=2, restarts=1)
    fit(cb, model=make_autoencoder_with(custom=True))
    assert cb.latent_dim == 4


def make_autoencoder_with(custom=False):
    model = make_autoencoder()
    if custom:
        model.custom = lambda z: Square.apply(model.decoder(z))
    return model


def test_a_decoder_without_gradients_fails_for_latent_recovery():
    model = make_autoencoder()

    def frozen(z):
        with torch.no_grad():
            return model.decoder(z)

    model.frozen = frozen
    with pytest.raises(ValueError, match=r"recovers latents by gradient descent.*`frozen`"):
        fit(RecoveryMonitor(decoder="frozen"), model=model)


def test_bernoulli_likelihood_on_inputs_outside_the_unit_interval():
    train, val = digits_tensors()
    data = loaders_of(TensorDataset(2 * train - 1), TensorDataset(2 * val - 1))
    with pytest.raises(ValueError, match=r"likelihood='auto'.*in \[0, 1\].*`preprocess=`"):
        fit(LikelihoodMonitor(encoder="encode"), make_autoencoder(), *data)


# ------------------------------------------------------- several monitors (items 3, 9)
def test_two_monitors_of_one_class_that_log_the_same_keys_fail_at_setup():
    """Before: Lightning averaged their values silently (-4.956 and -4.942 gave -4.949)."""
    first = GeometryMonitor(encoder="encode", families=("spectrum",))
    second = GeometryMonitor(encoder="encode", families=("spectrum", "density"), seed=1)
    trainer = quiet_trainer(callbacks=[first, second], max_epochs=1)
    with pytest.raises(
        ValueError, match=r"distinct keys.*'seed': 0.*'seed': 1.*disjoint `families`"
    ):
        trainer.fit(make_autoencoder(), *digits_loaders())


def test_two_monitors_with_disjoint_families_watch_together():
    first = GeometryMonitor(encoder="encode", families=("spectrum",), probe_size=8)
    second = GeometryMonitor(encoder="encode", families=("density",), probe_size=8, seed=1)
    trainer = quiet_trainer(callbacks=[first, second], max_epochs=1)
    trainer.fit(make_autoencoder(), *digits_loaders())
    assert {"memwatch/spectrum/probe_size", "memwatch/density/probe_size"} <= set(
        trainer.callback_metrics
    )


def test_geometry_monitors_of_disjoint_families_share_one_probe():
    """Their ``state_key`` holds their families, so one probe (same size and seed) serves both,
    e.g. a top-k spectrum beside an exact density."""
    first = GeometryMonitor(encoder="encode", families=("spectrum",), probe_size=8)
    second = GeometryMonitor(encoder="encode", families=("density",), probe_size=8, top_k=None)
    assert first.state_key != second.state_key != GeometryMonitor(probe_size=8).state_key
    trainer = quiet_trainer(callbacks=[first, second], max_epochs=1)
    trainer.fit(make_autoencoder(), *digits_loaders())
    assert torch.equal(first.indices["train"], second.indices["train"])
    assert {"memwatch/spectrum/probe_size", "memwatch/density/probe_size"} <= set(
        trainer.callback_metrics
    )


def test_a_duplicate_state_key_is_refused_when_the_trainer_is_built():
    """Lightning checks ``state_key`` uniqueness in ``Trainer(...)``, before any memwatch hook,
    and refers to the callback's documentation, which says what to change."""
    twins = [GeometryMonitor(families=("spectrum",)), GeometryMonitor(families=("spectrum",))]
    with pytest.raises(RuntimeError, match=r"GeometryMonitor.*state_key"):
        quiet_trainer(callbacks=twins)
    from lightning_memwatch.callbacks.machinery.monitor import MemwatchMonitor

    doc = " ".join(MemwatchMonitor.__doc__.split())
    assert "distinct ``state_key``" in doc and "``seed`` or ``probe_size``" in doc
