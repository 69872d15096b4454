"""Errors that point to the right tool (issue 22): a denoiser or a sampler named as the decoder,
a sampler whose second parameter is not a generator, an exception raised inside the user's own
code, a likelihood without ``q(z|x)``. Each is triggered before any training step, and its
message is checked for what it names."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memwatch import GeometryMonitor, LikelihoodMonitor, RecoveryMonitor, SampleMonitor
from lightning_memwatch.callbacks.machinery.calling import draw_samples
from tests.conftest import digits_loaders, digits_tensors, make_autoencoder, quiet_trainer

THIS_FILE = "tests/callbacks/test_pointing_errors.py"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def fit(callbacks, model, max_epochs=1, loaders=None):
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=max_epochs)
    trainer.fit(model, *(loaders or digits_loaders()))
    return trainer


class ToyDiffusion(nn.Module):
    """The calling conventions of lucidrains' ``GaussianDiffusion``: ``forward(img)`` is the
    loss, ``model(x, t)`` the denoiser, ``sample(batch_size=16, return_all_timesteps=False)``
    and ``ddim_sample(shape, return_all_timesteps=False)`` draw their own noise from the global
    RNG. Sampling takes ``steps`` denoising steps from ``torch.randn``."""

    def __init__(self, steps: int = 10) -> None:
        super().__init__()
        self.net = nn.Conv2d(1, 1, 3, padding=1)
        self.steps = steps

    def model(self, x, t):
        return self.net(x) * (1 + t.float().view(-1, 1, 1, 1) / self.steps)

    def ddim_sample(self, shape, return_all_timesteps=False):
        x = torch.randn(shape)
        states = [x]
        for step in reversed(range(self.steps)):
            x = x - 0.1 * self.model(x, torch.full((shape[0],), step))
            states.append(x)
        return torch.stack(states, dim=1) if return_all_timesteps else x

    def sample(self, batch_size=16, return_all_timesteps=False):
        return self.ddim_sample((batch_size, 1, 8, 8), return_all_timesteps)


class DiffusionModule(L.LightningModule):
    """A pixel diffusion model as a user wraps lucidrains' ``GaussianDiffusion``."""

    def __init__(self) -> None:
        super().__init__()
        self.diffusion = ToyDiffusion()
        self.latent_dim = 64

    def denoise(self, x_t, timestep):
        return self.diffusion.model(x_t, timestep)

    def draw(self):
        return self.diffusion.sample(4)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        t = torch.randint(0, 10, (len(x),))
        noise = torch.randn_like(x)
        return nn.functional.mse_loss(self.diffusion.model(x + noise, t), noise)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


@pytest.mark.parametrize(
    ("decoder", "what"),
    [("diffusion.model", "requires a timestep `t`"), ("denoise", "requires a timestep `timestep`")],
)
def test_a_denoiser_named_as_the_decoder_points_to_diffusion_monitor(decoder, what):
    """Before: "... also requires t: pass `decoder=` a module attribute that does", with no word
    of what to use for a diffusion model."""
    with pytest.raises(ValueError, match=f"decoder `{decoder}` to map a latent batch") as e:
        fit([GeometryMonitor(decoder=decoder)], DiffusionModule())
    message = str(e.value)
    assert what in message and "DiffusionMonitor(denoiser=..., schedule=...)" in message
    assert "diffusion model's denoiser" in message


@pytest.mark.parametrize(
    ("decoder", "what"),
    [
        ("diffusion.sample", "takes `batch_size` first"),
        ("diffusion.ddim_sample", "takes `shape` first"),  # before: a raw randn() TypeError
        ("draw", "takes no latent"),
    ],
)
def test_a_sampler_named_as_the_decoder_points_to_sample_monitor(decoder, what):
    with pytest.raises(ValueError, match=f"decoder `{decoder}` to take a latent batch") as e:
        fit([RecoveryMonitor(decoder=decoder)], DiffusionModule())
    message = str(e.value)
    assert what in message and "as a sampler does" in message
    assert "SampleMonitor(sampler=...)" in message and "DiffusionMonitor" in message
    assert "latent_dim" not in message


def test_sample_monitor_calls_a_sampler_without_a_generator_under_a_seeded_rng():
    """Before: ``sampler(n, generator)`` passed the generator as ``return_all_timesteps``, and
    the user was told "704 values per sample against the data's 64". Now ``sampler(n)`` inside
    an isolated global RNG seeded by ``seed``: the same samples every epoch (as drawn directly
    after ``torch.manual_seed(seed)``), the global RNG untouched, training bit-identical."""
    cb = SampleMonitor(
        sampler="diffusion.sample",
        reference_size=64,
        num_generated=32,
        cells=1,  # noise samples: one cell holds tau = 20 of them
        max_overhead=math.inf,
    )
    L.seed_everything(0, verbose=False)
    model = DiffusionModule()
    trainer = fit([cb], model, max_epochs=2)
    assert math.isfinite(trainer.callback_metrics["memwatch/samples/ct"].item())
    state = torch.get_rng_state()
    first, again = cb.generate(model, 5), cb.generate(model, 5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(cb.seed)
    with torch.no_grad():
        direct = model.diffusion.sample(5)
    assert torch.equal(first, again) and torch.equal(first.detach(), direct)
    L.seed_everything(0, verbose=False)
    plain = DiffusionModule()
    fit([], plain, max_epochs=2)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters(), strict=True)
    )


@pytest.mark.parametrize("kind", ["keyword", "positional or keyword", "keyword only", "kwargs"])
def test_a_sampler_that_takes_a_generator_gets_it_by_keyword(kind):
    seen = {}

    def record(n, generator=None, **extra):
        seen.update(n=n, generator=generator, extra=extra)
        return torch.randn(n, 2, generator=generator)

    samplers = {
        "keyword": lambda n, return_all=False, generator=None: record(n, generator=generator),
        "positional or keyword": lambda n, generator: record(n, generator=generator),
        "keyword only": lambda n, *, generator: record(n, generator=generator),
        "kwargs": lambda n, **kwargs: record(n, **kwargs),
    }
    out = draw_samples(samplers[kind], 3, seed=5, device=torch.device("cpu"))
    assert seen["n"] == 3 and isinstance(seen["generator"], torch.Generator)
    assert seen["extra"] == {}
    assert torch.equal(out, torch.randn(3, 2, generator=torch.Generator().manual_seed(5)))


# ------------------------------------------------------------ the user's own exceptions
class BuggyDecoder(L.LightningModule):
    """The tiny autoencoder's shape, with decoder methods that fail in their own code."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = make_autoencoder()
        self.latent_dim = 4

    def decode_typo(self, z):
        # the bug: no `settings` attribute
        scale = self.settings["scale"]
        return self.inner.decoder(z) * scale

    def decode_key(self, z):
        table = {"mean": self.inner.decoder(z)}
        return table["reconstruction"]

    def encode_buggy(self, x):
        return self.inner.encoder(x) / self.temperature()

    def training_step(self, batch, batch_idx):
        return self.inner.training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return self.inner.configure_optimizers()


@pytest.mark.parametrize(
    ("decoder", "raised", "code"),
    [
        ("decode_typo", "AttributeError", 'scale = self.settings["scale"]'),
        ("decode_key", "KeyError: 'reconstruction'", 'return table["reconstruction"]'),
    ],
)
def test_an_exception_in_the_decoders_own_code_is_shown_as_the_users(decoder, raised, code):
    """Before: the error was wrapped as "Pass `latent_dim=` the latent size the decoder takes"
    whatever it was."""
    with pytest.raises(ValueError, match=f"could not run the decoder `{decoder}`") as e:
        fit([GeometryMonitor(decoder=decoder)], BuggyDecoder())
    message = str(e.value)
    assert raised in message and f"{THIS_FILE}:" in message and f"in {decoder}: `{code}`" in message
    assert "decoder's own code" in message and "Pass `latent_dim=`" not in message
    assert isinstance(e.value.__cause__, (AttributeError, KeyError))


def test_an_exception_in_the_encoders_own_code_is_shown_as_the_users():
    with pytest.raises(ValueError, match="could not run the encoder `encode_buggy`") as e:
        fit([GeometryMonitor(decoder="inner.decoder", encoder="encode_buggy")], BuggyDecoder())
    message = str(e.value)
    assert "AttributeError" in message and "temperature" in message
    assert f"{THIS_FILE}:" in message and "in encode_buggy: `return self.inner" in message
    assert "encoder's own code" in message and "preprocess" not in message


def test_a_latent_size_the_decoder_does_not_take_still_blames_latent_dim():
    """A shape mismatch on the latent's last dimension is the one case that names
    ``latent_dim``."""
    with pytest.raises(ValueError, match=r"on a \(2, 6\) latent batch \(latent_dim=6") as e:
        fit([GeometryMonitor(decoder="inner.decoder", latent_dim=6)], BuggyDecoder())
    message = str(e.value)
    assert "Pass `latent_dim=` the latent size the decoder takes" in message
    assert "mat1 and mat2 shapes cannot be multiplied (2x6 and 4x32)" in message


# ------------------------------------------------------------------------- likelihood
def test_likelihood_without_a_posterior_says_so_before_any_advice_on_inputs():
    """Before: inputs in [-1, 1] first got 'pass `likelihood="gaussian"`', which then failed
    differently. A deterministic encoder has no q(z|x): that comes first."""
    train, val = digits_tensors()
    loaders = [DataLoader(TensorDataset(x * 2 - 1), batch_size=32) for x in (train, val)]
    model = make_autoencoder()
    cb = LikelihoodMonitor(encoder="encoder", probe_size=8)  # a plain nn.Sequential
    with pytest.raises(ValueError, match="needs a probabilistic encoder q") as e:
        fit([cb], model, loaders=loaders)
    message = str(e.value)
    assert message.startswith("LikelihoodMonitor(likelihood='auto') needs a probabilistic")
    assert "encoder `encoder` gives a tensor of shape (2, 4)" in message
    assert "GeometryMonitor and RecoveryMonitor" in message and "[0, 1]" not in message
    assert model.losses == []
