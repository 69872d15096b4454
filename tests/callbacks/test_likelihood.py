"""LikelihoodMonitor in real (tiny) Lightning runs on CPU."""

from __future__ import annotations

import math
import re

import lightning as L
import numpy as np
import pytest
import torch
from scipy import special, stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memwatch import LikelihoodMonitor
from lightning_memwatch.functional import (
    bernoulli_log_likelihood,
    importance_log_likelihood,
    posterior_from_encoder,
)
from tests.callbacks.test_geometry import fit
from tests.conftest import (
    assert_resume_gives_the_same_metrics,
    digits_tensors,
    make_autoencoder,
    quiet_trainer,
)
from tests.examples.conftest import load_example


def monitor(**kwargs) -> LikelihoodMonitor:
    """TinyAutoencoder: ``encode`` gives ``(z, 0)``, a unit-variance Gaussian ``q(z|x)``; its
    decoder ends in a sigmoid, so its outputs are Bernoulli probabilities."""
    options = {
        "encoder": "encode",
        "likelihood": "bernoulli_probs",
        "probe_size": 12,
        "num_samples": 16,
        "max_overhead": math.inf,
    }
    options.update(kwargs)
    return LikelihoodMonitor(**options)


class TinyVAE(L.LightningModule):
    """A Bernoulli VAE on 8 x 8 digits (van den Burg's MNIST model, scaled down); its decoder
    returns logits. ``losses`` records every training step."""

    def __init__(self, latent_dim: int = 4, hidden: int = 64, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 64),
            nn.Unflatten(1, (1, 8, 8)),
        )
        self.losses: list[float] = []

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return mean, log_var

    def training_step(self, batch, batch_idx):
        (x,) = batch
        mean, log_var = self.encode(x)
        z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
        rec = nn.functional.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum()
        loss = (rec + kl) / len(x)
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def test_logs_every_key_it_declares_and_writes_histograms(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = monitor()
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    trainer, _ = fit([cb], max_epochs=2, logger=logger)
    logged = {k for k in trainer.callback_metrics if k.startswith("memwatch/")}
    assert logged == set(cb.logged_keys)
    assert {f"memwatch/likelihood/{key}" for key in ("train", "val", "gap", "ks_pvalue")} <= logged
    assert trainer.callback_metrics["memwatch/likelihood/probe_size"] == 12
    assert trainer.callback_metrics["memwatch/likelihood/nonfinite"] == 0
    logger.experiment.flush()
    events = EventAccumulator(
        str(tmp_path / "run" / "version_0"), size_guidance={"tensors": 0, "histograms": 0}
    )
    events.Reload()
    tags = events.Tags()
    assert set(cb.logged_keys) <= set(tags["scalars"])
    assert {"memwatch/likelihood/log_px/train", "memwatch/likelihood/log_px/val"} <= set(
        tags["histograms"]
    )
    scalar_steps = [e.step for e in events.Scalars("memwatch/likelihood/train")]
    assert scalar_steps == [e.step for e in events.Histograms("memwatch/likelihood/log_px/train")]
    assert "custom_scalars__config__" in tags["tensors"]


def test_values_equal_an_independent_recomputation():
    """The logged means, gap and KS p-value equal numpy/scipy on the functional estimates with
    the documented seeding (seed + 7919 at every epoch, train then val)."""
    cb = monitor()
    trainer, model = fit([cb], max_epochs=1)
    model.eval()
    generator = torch.Generator().manual_seed(cb.seed + 7919)
    lik = bernoulli_log_likelihood(model.decoder, logits=False)
    log_px = {
        split: importance_log_likelihood(
            cb.inputs[split],
            posterior_from_encoder(model.encode),
            lik,
            num_samples=16,
            generator=generator,
        ).numpy()
        for split in ("train", "val")
    }
    got = {
        k.rsplit("/", 1)[1]: v.item()
        for k, v in trainer.callback_metrics.items()
        if k.startswith("memwatch/likelihood/")
    }
    assert got["train"] == pytest.approx(log_px["train"].mean(), rel=1e-6)
    assert got["val"] == pytest.approx(log_px["val"].mean(), rel=1e-6)
    assert got["gap"] == pytest.approx(log_px["train"].mean() - log_px["val"].mean(), abs=1e-4)
    ks = stats.ks_2samp(log_px["train"], log_px["val"]).pvalue
    assert got["ks_pvalue"] == pytest.approx(ks, rel=1e-6)


def test_training_is_bit_identical_with_and_without_the_monitor():
    _, plain = fit([], max_epochs=2)
    _, watched = fit([monitor()], max_epochs=2)
    assert plain.losses == watched.losses
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_sharded_probe_gives_the_single_process_values():
    """Each DDP rank measures its ``shard``; the samples are drawn for the whole probe, so the
    shards interleave back into the single-process values."""
    model = make_autoencoder().eval()
    cb = monitor(likelihood="gaussian", scale=0.3)
    x, _ = digits_tensors(10, 1)

    def run(rank, world):
        return cb.log_px(model, x, torch.Generator().manual_seed(4), rank, world)

    single = run(0, 1)
    merged = torch.empty_like(single)
    merged[0::2], merged[1::2] = run(0, 2), run(1, 2)
    torch.testing.assert_close(merged, single, rtol=1e-6, atol=1e-6)


def test_resume_gives_the_same_numbers(tmp_path):
    assert_resume_gives_the_same_metrics(monitor, tmp_path)


def test_a_vae_that_memorizes_gives_its_training_digits_higher_likelihood():
    """16 digits seen 150 times: the train probe's log p(x) is far above the held-out one's."""
    train, val = digits_tensors(16, 64)
    epochs = 10  # 15 passes over the 16 digits per epoch; one measurement, at the end
    cb = LikelihoodMonitor(
        encoder="encode",
        probe_size=16,
        every_n_epochs=epochs,
        num_samples=64,
        max_overhead=math.inf,
    )
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=[cb], max_epochs=epochs, num_sanity_val_steps=0)
    trainer.fit(
        TinyVAE(),
        DataLoader(TensorDataset(train.repeat(15, 1, 1, 1)), batch_size=16, shuffle=True),
        DataLoader(TensorDataset(val), batch_size=64),
    )
    got = {
        k.rsplit("/", 1)[1]: v.item()
        for k, v in trainer.callback_metrics.items()
        if k.startswith("memwatch/likelihood/")
    }
    assert got["gap"] > 5.0
    assert got["ks_pvalue"] < 0.01


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoder": None}, r"encoder.*q\(z\|x\)"),
        ({"scale": 0.0}, "scale"),
        ({"num_samples": 0}, "num_samples"),
        ({"likelihood": ""}, "likelihood"),
        ({"probe_size": 0}, "probe_size"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        monitor(**kwargs)


def test_unknown_likelihood_fails_at_setup_naming_the_choices():
    with pytest.raises(
        ValueError, match=r"one of \('auto', 'bernoulli'.*has no `poisson` attribute"
    ):
        fit([monitor(likelihood="poisson")], max_epochs=1)


def test_deterministic_encoder_fails_before_training_with_the_fix():
    model = make_autoencoder()
    with pytest.raises(ValueError, match=r"probabilistic encoder.*\(mean, log_var\)"):
        fit([monitor(encoder="encoder")], max_epochs=1, model=model)
    assert model.losses == []


def test_a_module_method_as_likelihood():
    """``likelihood="name"`` calls the module's ``log_likelihood(x, z)``: here the Gaussian of
    scale 0.3 written by hand equals the built-in ``"gaussian"``."""
    model = make_autoencoder(dropout=0.0)

    def log_lik(x, z):
        mean = model.decoder(z).flatten(1).double()
        dist = torch.distributions.Normal(mean, 0.3)
        return dist.log_prob(x.flatten(1).double()).sum(1)

    model.gauss = log_lik
    x, _ = digits_tensors(6, 1)
    model.eval()
    values = [
        monitor(likelihood=name, scale=0.3).log_px(model, x, torch.Generator().manual_seed(0))
        for name in ("gauss", "gaussian")
    ]
    torch.testing.assert_close(values[0], values[1], rtol=1e-9, atol=1e-9)
    assert np.isfinite(values[0].numpy()).all()


def test_memorization_early_stopping_watches_the_likelihood_gap():
    """A rule that holds at every measurement (gap above -1e9) stops at the first one."""
    from lightning_memwatch import MemorizationEarlyStopping

    stopper = MemorizationEarlyStopping("memwatch/likelihood/gap", threshold=-1e9, mode="above")
    trainer, _ = fit([monitor(every_n_epochs=2), stopper], max_epochs=5)
    assert stopper.stopped_epoch == 1 and trainer.current_epoch == 2


# --------------------------------------------- how a Bernoulli decoder's outputs are read
def _numpy_log_px(model, x, eps, reader):
    """van den Burg & Williams (2021), eq. 9 in float64 numpy on the demo VAE's weights: encoder
    ``Flatten, Linear, Tanh, Linear -> (mu, log_var)``, decoder ``Linear, Tanh, Linear, Sigmoid``;
    ``reader(a, x)`` is ``log p(x|z)`` per element from the last linear layer's output ``a``."""
    w = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    xs = x.reshape(len(x), -1).double().numpy()
    h = np.tanh(xs @ w["encoder.1.weight"].T + w["encoder.1.bias"])
    mu, log_var = np.split(h @ w["encoder.3.weight"].T + w["encoder.3.bias"], 2, axis=1)
    sd = np.exp(0.5 * log_var)
    z = mu + sd * eps.double().numpy()  # (N, P, m)
    log_q = stats.norm(mu, sd).logpdf(z).sum(-1)
    log_prior = stats.norm().logpdf(z).sum(-1)
    a = np.tanh(z @ w["decoder.0.weight"].T + w["decoder.0.bias"])
    a = a @ w["decoder.2.weight"].T + w["decoder.2.bias"]
    log_lik = reader(a, xs).sum(-1)
    return special.logsumexp(log_lik + log_prior - log_q, axis=0) - math.log(len(eps))


def _probabilities(a, x):  # pi = sigmoid(a), the demo decoder's output
    pi = special.expit(a)
    return x * np.log(pi) + (1 - x) * np.log1p(-pi)


def _probabilities_read_as_logits(a, x):  # the outputs pi taken for logits
    pi = special.expit(a)
    return x * pi - np.logaddexp(0, pi)


def test_the_demo_vae_at_the_default_likelihood_gets_the_bernoulli_probability_value():
    """The README's demo VAE ends in a sigmoid: at the default ``likelihood`` the logged means
    equal a float64 numpy computation with probabilities (issue 14 item 4: they were read as
    logits, -53.5 instead of -45.6 nats)."""
    digits_vae = load_example("digits_vae")
    cb = LikelihoodMonitor(encoder="encode", probe_size=16, num_samples=16, max_overhead=math.inf)
    L.seed_everything(0, verbose=False)
    model = digits_vae.DigitsVAE(hidden=64)
    data = digits_vae.DigitsDataModule(n_train=96, n_val=64, batch_size=32)
    trainer = quiet_trainer(callbacks=[cb], max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(model, data)
    generator = torch.Generator().manual_seed(cb.seed + 7919)  # the documented draws
    for split in ("train", "val"):
        x = cb.inputs[split]
        eps = torch.randn(16, len(x), model.latent_dim, generator=generator)
        want = _numpy_log_px(model, x, eps, _probabilities).mean()
        wrong = _numpy_log_px(model, x, eps, _probabilities_read_as_logits).mean()
        got = trainer.callback_metrics[f"memwatch/likelihood/{split}"].item()
        assert got == pytest.approx(want, rel=1e-5)
        assert abs(wrong - want) > 5.0  # the two readings are far apart on this model
    assert cb.resolved_likelihood == "bernoulli_probs"


@pytest.mark.parametrize(
    ("make_model", "expected"), [(TinyVAE, "bernoulli"), (make_autoencoder, "bernoulli_probs")]
)
def test_auto_reads_logits_and_probabilities_as_they_are(make_model, expected):
    """``"auto"`` picks logits for TinyVAE and probabilities for the sigmoid autoencoder, and
    logs what the explicit choice gives on the same probe and draws."""
    cb = monitor(likelihood="auto")
    trainer, model = fit([cb], max_epochs=1, model=make_model())
    assert cb.resolved_likelihood == expected
    explicit = monitor(likelihood=expected)
    model.eval()
    for split, offset in (("train", 0), ("val", 1)):
        generator = torch.Generator().manual_seed(cb.seed + 7919)
        if offset:  # the val draws follow the train draws of the same generator
            explicit.log_px(model, cb.inputs["train"], generator)
        want = explicit.log_px(model, cb.inputs[split], generator).mean().item()
        got = trainer.callback_metrics[f"memwatch/likelihood/{split}"].item()
        assert math.isfinite(want) and got == pytest.approx(want, rel=1e-6)


def test_logits_reading_of_a_sigmoid_decoder_fails_when_training_starts():
    model = make_autoencoder()  # decoder ends in nn.Sigmoid
    with pytest.raises(
        ValueError,
        match=r"LikelihoodMonitor\(likelihood='bernoulli'\) reads the decoder's outputs as "
        r"Bernoulli logits, but on the training probe they lie in \[0\.\d+, 0\.\d+\].*"
        r'`likelihood="bernoulli_probs"`',
    ):
        fit([monitor(likelihood="bernoulli")], max_epochs=1, model=model)
    assert model.losses == []  # before any training step


def test_probabilities_reading_of_a_logit_decoder_fails_when_training_starts():
    model = TinyVAE()
    with pytest.raises(
        ValueError,
        match=r"LikelihoodMonitor\(likelihood='bernoulli_probs'\) reads the decoder's outputs "
        r'as Bernoulli probabilities, but .* outside \[0, 1\]: pass `likelihood="bernoulli"`',
    ):
        fit([monitor(likelihood="bernoulli_probs")], max_epochs=1, model=model)
    assert model.losses == []


@pytest.mark.parametrize("likelihood", ["auto", "bernoulli", "bernoulli_probs"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_bernoulli_inputs_outside_the_unit_interval_fail_when_training_starts(likelihood, split):
    """Issue 14 item 7: the error comes before any training step and names the monitor, the
    argument, the probe's min / max and the fixes."""
    train, val = digits_tensors()
    shifted = {"train": train, "val": val}
    shifted[split] = shifted[split] * 2 - 1
    loaders = [DataLoader(TensorDataset(shifted[s]), batch_size=32) for s in ("train", "val")]
    cb, model = monitor(likelihood=likelihood), make_autoencoder()
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=[cb], max_epochs=1)
    with pytest.raises(ValueError) as error:
        trainer.fit(model, *loaders)
    low, high = cb.inputs[split].min().item(), cb.inputs[split].max().item()
    what = "training" if split == "train" else "validation"
    found = f"the {what} probe's inputs lie in [{low:.4g}, {high:.4g}]"
    assert low < 0
    message = str(error.value)
    assert message.startswith(f"LikelihoodMonitor(likelihood={likelihood!r})"), message
    assert found in message and "inputs in [0, 1]" in message, message
    assert '`likelihood="gaussian"`' in message and "rescale" in message, message
    assert model.losses == []


def _ambiguous_dict_decoder(model):
    # a tuple's first element is read as the output (issue 13); a dict of two tensors is ambiguous
    model.pair_decoder = lambda z: {"mean": model.decoder(z), "z": z}
    return {"decoder": "pair_decoder"}, r"decoder_output="


def _decoder_with_an_extra_argument(model):
    model.conditional = lambda z, label: model.decoder(z)
    return {"decoder": "conditional"}, r"take the latent batch alone.*requires label"


def _decoder_of_another_latent_size(model):
    model.wide = nn.Sequential(nn.Linear(6, 64), nn.Sigmoid())  # the encoder gives 4 latents
    return {"decoder": "wide"}, r"cannot be multiplied.*`latent_dim=`"


def _likelihood_of_the_wrong_shape(model):
    model.per_pixel = lambda x, z: (x.flatten(1) - model.decoder(z).flatten(1)).square()
    return {"likelihood": "per_pixel"}, r"one value per row"


@pytest.mark.parametrize(
    "break_module",
    [
        _ambiguous_dict_decoder,
        _decoder_with_an_extra_argument,
        _decoder_of_another_latent_size,
        _likelihood_of_the_wrong_shape,
    ],
)
def test_a_misconfigured_decoder_or_likelihood_fails_when_training_starts(break_module):
    """Issue 14 item 7: the decoder and the likelihood run once on the probe when training
    starts, so these fail before any training step, naming the monitor and its arguments."""
    model = make_autoencoder()
    kwargs, cause = break_module(model)
    cb = monitor(**kwargs)
    with pytest.raises(ValueError, match=r"LikelihoodMonitor") as error:
        fit([cb], max_epochs=1, model=model)
    message = str(error.value)
    assert re.search(cause, message), message
    (argument,) = kwargs  # the message names the argument that was misconfigured, and its value
    assert f"`{kwargs[argument]}`" in message or f"{argument}={kwargs[argument]!r}" in message
    assert model.losses == []
