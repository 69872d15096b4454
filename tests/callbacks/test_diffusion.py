"""DiffusionMonitor on a diffusers UNet, a model of one's own and a denoising_diffusion_pytorch
stand-in: its numbers against the same quantities computed here, training untouched, resumes,
setup errors, and the rules reading its keys."""

from __future__ import annotations

import copy
import math

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from lightning_memwatch import DiffusionMonitor, EffectAgreement, MemorizationEarlyStopping
from lightning_memwatch.callbacks.machinery.diffusion_probes import LOSS_STREAM, row_noise
from tests.callbacks.diffusion_models import (
    DiffusionModule,
    LucidrainsModule,
    labelled_digits_loaders,
)
from tests.conftest import digits_loaders, digits_tensors, quiet_trainer

EVERY = {"max_overhead": math.inf, "data_range": (0, 1)}
ALL = ("loss", "spectrum", "samples")


class Record(L.Callback):
    """The memwatch values after every training epoch (monitors measure before this runs)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        self.epochs.append({k: v.item() for k, v in metrics.items() if k.startswith("memwatch/")})


def fit(model, monitor, epochs=1, loaders=None, **trainer_kwargs):
    L.seed_everything(0, verbose=False)
    record = Record()
    trainer = quiet_trainer(callbacks=[monitor, record], max_epochs=epochs, **trainer_kwargs)
    trainer.fit(model, *(loaders or digits_loaders(64, 32)))
    return trainer, record


def expected_losses(predict, x0, rows, abar, grid, prediction="epsilon", seed=0):
    """Per-sample losses in float64 numpy from the model's own forward pass, with the noise the
    monitor fixes for each probe row (its definition: one generator per row and seed)."""
    noise = row_noise(seed, LOSS_STREAM, rows, x0.shape[1:], len(grid)).double().numpy()
    x0 = x0.double().numpy()
    out = np.empty((len(x0), len(grid)))
    for k, t in enumerate(grid):
        a = float(abar[t])
        x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise[:, k]
        with torch.no_grad():
            pred = (
                predict(torch.from_numpy(x_t).float(), torch.full((len(x0),), t)).double().numpy()
            )
        eps = noise[:, k]
        target = {
            "epsilon": eps,
            "sample": x0,
            "v_prediction": np.sqrt(a) * eps - np.sqrt(1 - a) * x0,
        }
        out[:, k] = ((pred - target[prediction]) ** 2).reshape(len(x0), -1).mean(1)
    return out


def probe(monitor, split, n_train=64, n_val=32):
    train, val = digits_tensors(n_train, n_val)
    return (train if split == "train" else val)[monitor.indices[split]] * 2 - 1


# ------------------------------------------------------------------------- the numbers
@pytest.mark.parametrize("kind", ["own", "diffusers"])
def test_loss_family_equals_the_losses_computed_here_and_its_noise_stays_fixed(kind):
    model = DiffusionModule(kind, lr=0.0)  # a fixed model: every epoch must log the same
    names = {"own": {"denoiser": "net", "schedule": "alphas_cumprod", "prediction": "epsilon"}}
    monitor = DiffusionMonitor(**names.get(kind, {}), probe_size=16, **EVERY)
    _, record = fit(model, monitor, epochs=2)
    assert monitor.loss_grid == [2, 5, 10]  # the default fractions of T = 100
    model.eval()
    losses = {
        split: expected_losses(
            model.predict, probe(monitor, split), torch.arange(16), model.abar(), [2, 5, 10]
        )
        for split in ("train", "val")
    }
    first, second = record.epochs
    key = "memwatch/diffusion/loss"
    for values in (first, second):
        assert values[f"{key}/train"] == pytest.approx(losses["train"].mean(), rel=1e-5)
        assert values[f"{key}/val"] == pytest.approx(losses["val"].mean(), rel=1e-5)
        mean_train, mean_val = losses["train"].mean(), losses["val"].mean()
        assert values[f"{key}/relative_gap"] == pytest.approx(
            (mean_val - mean_train) / mean_val, rel=1e-4
        )
        for k, name in enumerate(("0.025", "0.05", "0.1")):
            assert values[f"{key}/t{name}/train"] == pytest.approx(
                losses["train"][:, k].mean(), rel=1e-5
            )
            assert values[f"{key}/t{name}/val"] == pytest.approx(
                losses["val"][:, k].mean(), rel=1e-5
            )
        delta = np.sign(losses["train"].mean(1)[:, None] - losses["val"].mean(1)[None]).mean()
        assert values[f"{key}/effect"] == pytest.approx(delta, abs=1e-6)
    assert first == pytest.approx(
        {**second, f"{key}/seconds": first[f"{key}/seconds"], f"{key}/staleness": 0.0}
    )


def test_logs_every_key_it_declares_and_the_samples_strip(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from tests.conftest import read_events

    monitor = DiffusionMonitor(
        "net",
        "alphas_cumprod",
        "epsilon",
        probe_size=8,
        families=ALL,
        num_generated=48,
        cells=2,
        **EVERY,
    )
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    trainer, _ = fit(DiffusionModule("own"), monitor, logger=logger)
    logged = {k for k in trainer.callback_metrics if k.startswith("memwatch/")}
    assert logged == monitor.logged_keys
    events = read_events(tmp_path)
    assert "memwatch/diffusion/samples/nearest" in events.Tags()["images"]


def test_class_conditional_denoiser_is_measured_with_the_probes_own_labels():
    model = DiffusionModule("diffusers", classes=10, lr=0.0)
    monitor = DiffusionMonitor(
        probe_size=16, label_key=1, families=("loss", "samples"), num_generated=40, **EVERY
    )
    trainer, _ = fit(model, monitor, loaders=labelled_digits_loaders())
    train_loader = labelled_digits_loaders()[0]
    x, y = train_loader.dataset.tensors
    rows = monitor.indices["train"]
    model.eval()
    grid = monitor.loss_grid
    right = expected_losses(
        lambda x_t, t: model.predict(x_t, t, y[rows]),
        x[rows] * 2 - 1,
        torch.arange(16),
        model.abar(),
        grid,
    )
    wrong = expected_losses(
        lambda x_t, t: model.predict(x_t, t, (y[rows] + 1) % 10),
        x[rows] * 2 - 1,
        torch.arange(16),
        model.abar(),
        grid,
    )
    logged = trainer.callback_metrics["memwatch/diffusion/loss/train"].item()
    assert logged == pytest.approx(right.mean(), rel=1e-5)
    assert logged != pytest.approx(wrong.mean(), rel=1e-3)
    assert torch.equal(monitor.labels["train"], y[rows])


@pytest.mark.parametrize(("objective", "auto_normalize"), [("pred_v", True), ("pred_x0", False)])
def test_denoising_diffusion_pytorch_layout_is_read_as_it_is(objective, auto_normalize):
    """``DiffusionMonitor(denoiser="diffusion.model", schedule="diffusion")``: the prediction type
    from ``objective``, the scaling from ``normalize`` ([0, 1] -> [-1, 1] or none)."""
    model = LucidrainsModule(objective, auto_normalize)
    monitor = DiffusionMonitor(
        denoiser="diffusion.model", schedule="diffusion", probe_size=16, max_overhead=math.inf
    )
    trainer, _ = fit(model, monitor)
    assert monitor.prediction_type == {"pred_v": "v_prediction", "pred_x0": "sample"}[objective]
    x0 = digits_tensors(64, 32)[0][monitor.indices["train"]]
    x0 = x0 * 2 - 1 if auto_normalize else x0
    model.eval()
    expected = expected_losses(
        model.diffusion.model,
        x0,
        torch.arange(16),
        model.diffusion.alphas_cumprod,
        monitor.loss_grid,
        monitor.prediction_type,
    )
    logged = trainer.callback_metrics["memwatch/diffusion/loss/train"].item()
    assert logged == pytest.approx(expected.mean(), rel=1e-5)


# --------------------------------------------------------------- training is untouched
@pytest.mark.parametrize("kind", ["own", "diffusers"])
def test_training_is_bit_identical_with_and_without_the_monitor(kind):
    def run(callbacks):
        L.seed_everything(0, verbose=False)
        model = DiffusionModule(kind, global_rng=True)  # noise and timesteps from the global RNG
        trainer = quiet_trainer(callbacks=callbacks, max_epochs=2)
        trainer.fit(model, *digits_loaders(64, 32, shuffle=True))
        return model

    names = {"own": ("net", "alphas_cumprod", "epsilon")}.get(kind, ())
    plain = run([])
    monitor = DiffusionMonitor(
        *names, probe_size=8, families=ALL, num_generated=24, cells=2, spectrum_dim=8, **EVERY
    )  # the spectrum on 8 random directions: the same code path at an eighth of the cost
    watched = run([monitor])
    assert plain.losses == watched.losses
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_continues_the_fixed_noise_and_the_sampler_seeds(tmp_path):
    """Training draws from a generator keyed by the step and the loader does not shuffle, so the
    resumed run trains as the uninterrupted one; the monitor must then log the same values (its
    noise and its sampler's starting noise are fixed)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(ckpt_path=None):
        monitor = DiffusionMonitor(
            "net",
            "alphas_cumprod",
            "epsilon",
            probe_size=16,
            families=("loss", "samples"),
            num_generated=40,
            cells=2,
            reference_size=48,
            **EVERY,
        )
        checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
        L.seed_everything(0, verbose=False)
        trainer = quiet_trainer(
            callbacks=[monitor, checkpoints], max_epochs=3, enable_checkpointing=True
        )
        trainer.fit(
            DiffusionModule("own"), *digits_loaders(64, 32, shuffle=False), ckpt_path=ckpt_path
        )
        return trainer, monitor

    whole, monitor_whole = run()
    resumed, monitor_resumed = run(str(tmp_path / "epoch=1-step=4.ckpt"))
    assert torch.equal(monitor_whole.reference_index, monitor_resumed.reference_index)
    for key in monitor_whole.logged_keys:
        if key.endswith("/seconds"):
            continue
        a, b = whole.callback_metrics[key].item(), resumed.callback_metrics[key].item()
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9, nan_ok=True), key


# ------------------------------------------------------------------------- setup errors
class OneArgument(DiffusionModule):
    def denoise(self, x):
        return x


class WrongShape(DiffusionModule):
    def denoise(self, x_t, t):
        return torch.cat([x_t, x_t], dim=1)


class Failing(DiffusionModule):
    def denoise(self, x_t, t):
        raise RuntimeError("no such layer")


@pytest.mark.parametrize(
    ("module", "kwargs", "match"),
    [
        (OneArgument, {"denoiser": "denoise"}, r"denoiser `denoise` to take \(x_t, t\)"),
        (WrongShape, {"denoiser": "denoise"}, "prediction of the input's shape"),
        (Failing, {"denoiser": "denoise"}, "could not run the denoiser `denoise`.*no such layer"),
        (DiffusionModule, {"denoiser": "net", "schedule": "net"}, "`alphas_cumprod` attribute"),
        (DiffusionModule, {"denoiser": "net", "schedule": "nothing"}, "has no `nothing`"),
        (DiffusionModule, {"denoiser": "net", "prediction": "auto"}, "declares none"),
        (DiffusionModule, {"denoiser": "net", "timesteps": (5, 100)}, "below the schedule's 100"),
    ],
)
def test_misconfigurations_fail_before_training_with_the_fix(module, kwargs, match):
    kwargs = {"schedule": "alphas_cumprod", "prediction": "epsilon", **kwargs}
    monitor = DiffusionMonitor(probe_size=8, **kwargs, **EVERY)
    model = module("own")
    with pytest.raises(ValueError, match=match):
        fit(model, monitor)
    assert model.losses == []  # nothing trained


def test_a_scheduler_of_an_unknown_prediction_type_fails():
    model = DiffusionModule("diffusers")
    model.noise_scheduler.register_to_config(prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="declares 'flow_prediction'"):
        fit(model, DiffusionMonitor(probe_size=8, **EVERY))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prediction": "flow"}, "Expected `prediction`"),
        ({"families": ("loss", "density")}, "Expected `families`"),
        ({"timesteps": (0.5, 1.5)}, "Expected `timesteps`"),
        ({"timesteps": (10, 10)}, "Expected `timesteps`"),
        ({"data_range": (1, 0)}, "Expected `data_range`"),
        ({"label_key": 1.5}, "Expected `label_key`"),
        ({"sampler_steps": 0}, "Expected `sampler_steps`"),
        ({"spectrum_dim": 0}, "Expected `spectrum_dim`"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionMonitor(**kwargs)


def test_reference_of_a_repeated_training_set_holds_each_image_once():
    """8 digits repeated 4 times: the samples family's training reference holds the 8 once (a
    repeat would be a copy's second nearest neighbour, d1 / d2 = 1, and hide it), and the DDIM
    samples' near-copy share equals a numpy d1 / d2 < 1/3 count against the 8 digits."""
    from torch.utils.data import DataLoader, TensorDataset

    train, val = digits_tensors(8, 32)
    loaders = (
        DataLoader(TensorDataset(train.repeat(4, 1, 1, 1)), batch_size=16, shuffle=True),
        DataLoader(TensorDataset(val), batch_size=16),
    )
    monitor = DiffusionMonitor(probe_size=8, families=("samples",), cells=2, **EVERY)
    fit(DiffusionModule("diffusers"), monitor, loaders=loaders)
    got = np.sort(monitor.reference.flatten(1).double().numpy(), axis=0)
    want = np.sort(train.flatten(1).double().numpy() * 2 - 1, axis=0)  # data_range (0, 1)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert len(np.unique(monitor.reference.flatten(1).numpy(), axis=0)) == 8


def test_a_slow_denoiser_is_priced_before_any_measurement_and_never_paid():
    """A denoiser with 400 extra operations a call at a 1 % budget over 4 short epochs: the
    timed denoiser calls price the smallest loss and spectrum measurements above what the run
    earns, so none is made (probe size 0 at every epoch) and both families are named."""
    model = DiffusionModule()
    net = model.net

    class Slow(nn.Module):
        def forward(self, x_t, t):
            total = x_t.new_zeros(())
            for _ in range(200):  # busy work, same output
                total = total + (x_t * 0).sum()
            return net(x_t, t) + total

    model.slow = Slow()
    families = ("loss", "spectrum")
    monitor = DiffusionMonitor(
        denoiser="slow", schedule="alphas_cumprod", prediction="epsilon", families=families,
        probe_size=16, max_overhead=0.01, data_range=(0, 1),
    )  # fmt: skip
    sizes = []

    class Sizes(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            metrics = trainer.callback_metrics
            sizes.append([int(metrics[f"memwatch/diffusion/{f}/probe_size"]) for f in families])

    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=[monitor, Sizes()], max_epochs=4)
    trainer.fit(model, *digits_loaders(64, 32))
    assert sizes == [[0, 0]] * 4 and monitor.measurements == 0
    assert set(monitor.budget.never) == {f"diffusion/{f}" for f in families}
    assert all(predicted > earned for predicted, earned in monitor.budget.never.values())


def test_attention_unet_measures_every_family_and_its_spectrum_equals_a_reverse_mode_one():
    """A UNet with attention in its mid block: all three families measured, and the spectrum
    of its x0-estimate (forward mode on SDPA's math kernel) equal to the singular values of a
    float64 Jacobian built row by row in reverse mode (``torch.autograd.functional``)."""
    from lightning_memwatch.functional import x0_estimator, x0_singular_values

    model = DiffusionModule("diffusers", attention=True)
    monitor = DiffusionMonitor(probe_size=8, families=ALL, num_generated=24, cells=2, **EVERY)
    trainer, _ = fit(model, monitor)
    for key in ("loss/train", "spectrum/log_volume/train", "samples/near_copy_share"):
        assert math.isfinite(trainer.callback_metrics[f"memwatch/diffusion/{key}"]), key
    abar = model.noise_scheduler.alphas_cumprod
    x_t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model.eval()
    estimate = x0_estimator(lambda x, t: model.unet(x, t).sample, 5, abar, "epsilon")
    got = x0_singular_values(estimate, x_t)
    unet64 = copy.deepcopy(model.unet).double()
    estimate64 = x0_estimator(lambda x, t: unet64(x, t).sample, 5, abar.double(), "epsilon")
    for point, values in zip(x_t.double(), got, strict=True):
        jac = torch.autograd.functional.jacobian(
            lambda x: estimate64(x).flatten(), point[None]
        ).reshape(64, 64)
        want = np.linalg.svd(jac.numpy(), compute_uv=False)
        np.testing.assert_allclose(values.numpy(), want, rtol=1e-3, atol=1e-4 * want[0])


# --------------------------------------------------------------------- rules on its keys
class EmpiricalDenoiser(nn.Module):
    """The ideal denoiser of the empirical distribution of ``images`` (flattened, in [-1, 1]):
    ``E[x_0 | x_t] = sum_i softmax_i(-|x_t - sqrt(a) x_i|^2 / (2 (1 - a))) x_i``, as an epsilon
    prediction. It reproduces its training images: the extreme of memorization."""

    def __init__(self, images: torch.Tensor, abar: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("images", images.flatten(1))
        self.register_buffer("abar", abar)

    def forward(self, x_t, t):
        a = self.abar[t][:, None]
        x = x_t.flatten(1)
        d2 = ((x[:, None, :] - a.sqrt()[:, :, None] * self.images[None]) ** 2).sum(-1)
        x0 = torch.softmax(-d2 / (2 * (1 - a)), dim=1) @ self.images
        return ((x - a.sqrt() * x0) / (1 - a).sqrt()).reshape(x_t.shape)


class GaussianDenoiser(nn.Module):
    """The ideal denoiser of N(mean, cov) fitted to all digits: it treats train and held-out
    digits alike (a generalizing model)."""

    def __init__(self, images: torch.Tensor, abar: torch.Tensor) -> None:
        super().__init__()
        flat = images.flatten(1).double()
        self.register_buffer("mean", flat.mean(0))
        self.register_buffer(
            "cov", torch.cov(flat.T) + 1e-3 * torch.eye(flat.shape[1], dtype=torch.float64)
        )
        self.register_buffer("abar", abar.double())

    def forward(self, x_t, t):
        a = self.abar[t][:, None]
        x = x_t.flatten(1).double()
        eye = torch.eye(len(self.mean), dtype=torch.float64)
        gain = (
            a.sqrt()[:, :, None]
            * self.cov
            @ torch.linalg.inv(a[:, :, None] * self.cov + (1 - a[:, :, None]) * eye)
        )
        x0 = self.mean + (gain @ (x - a.sqrt() * self.mean)[:, :, None])[:, :, 0]
        return ((x - a.sqrt() * x0) / (1 - a).sqrt()).reshape(x_t.shape).float()


class FixedDenoiserModule(L.LightningModule):
    def __init__(self, net: nn.Module, abar: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("alphas_cumprod", abar)
        self.scalar = nn.Parameter(torch.ones(()))

    def training_step(self, batch, batch_idx):
        return (self.scalar - batch[0].mean()).square()

    def configure_optimizers(self):
        return torch.optim.SGD([self.scalar], lr=0.1)


@pytest.mark.parametrize("memorizing", [True, False])
def test_effect_agreement_and_early_stopping_read_the_diffusion_keys(memorizing):
    from tests.callbacks.diffusion_models import linear_alphas_cumprod

    abar = linear_alphas_cumprod(100)
    train = digits_tensors(64, 32)[0]
    if memorizing:
        net = EmpiricalDenoiser(train * 2 - 1, abar)
    else:
        net = GaussianDenoiser(torch.cat(digits_tensors(1000, 400)) * 2 - 1, abar)
    monitor = DiffusionMonitor("net", "alphas_cumprod", "epsilon", probe_size=32, **EVERY)
    agreement = EffectAgreement(
        families=(("diffusion/loss", "loss", -1), ("diffusion/loss", "t0.05", -1))
    )
    stopper = MemorizationEarlyStopping("memwatch/agreement/bound", threshold=0.3, mode="above")
    on_effect = MemorizationEarlyStopping(
        "memwatch/diffusion/loss/effect_upper",
        threshold=-0.5,
        mode="below",
        report_only=True,
        log_key="memwatch/early_stopping/effect",
    )
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=[stopper, agreement, on_effect, monitor], max_epochs=3)
    trainer.fit(FixedDenoiserModule(net, abar), *digits_loaders(64, 32))
    bound = trainer.callback_metrics["memwatch/agreement/bound"].item()
    if memorizing:
        assert bound > 0.9 and stopper.stopped_epoch == 0 and on_effect.fired_epoch == 0
    else:
        assert bound < 0.3 and stopper.stopped_epoch is None and on_effect.fired_epoch is None
        assert trainer.current_epoch == 3
