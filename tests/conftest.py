"""Shared fixtures: small decoders with known structure and float64 reference computations,
and the test device.

``MEMWATCH_TEST_DEVICE=cuda python -m pytest tests/functional tests/metrics tests/callbacks``
runs the converted tests on CUDA: their inputs and modules go to ``tests.devices.DEVICE`` and
the results come back with ``.cpu()`` before numpy; :func:`quiet_trainer` trains with
``accelerator="gpu"`` and ``deterministic="warn"``; tests marked
``@pytest.mark.cpu_only(reason=...)`` are deselected by the hook below (the reason in the
marker). Unset (or ``cpu``), nothing changes and nothing is deselected.
"""

from __future__ import annotations

import copy
import os

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from tests.devices import DEVICE, DEVICE_VARIABLE, accelerator_for, split_cpu_only

# ---------------------------------------------------------- the test device (tests/devices.py)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, deselected = split_cpu_only(items, DEVICE)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_report_header(config: pytest.Config) -> str:
    return f"memwatch test device: {DEVICE} ({DEVICE_VARIABLE}; cpu when unset)"


@pytest.fixture(scope="session", autouse=True)
def _test_device_is_there() -> None:
    """Stop at once when the named device is missing (rather than fail every test)."""
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.exit(f"{DEVICE_VARIABLE}={DEVICE} but torch.cuda.is_available() is False", 2)


@pytest.fixture(autouse=True)
def _torch_flags_restored():
    """``Trainer(deterministic=...)`` sets process-wide flags and never unsets them: put them back
    after each test, so that one test's trainer does not change the next test's algorithms."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark
    if workspace is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


@pytest.fixture
def device() -> torch.device:
    return DEVICE


def random_orthogonal(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def linear_map(n: int, m: int, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``A = U diag(s) V^T`` (n x m) with random orthogonal U, V and chosen singular values s."""
    u = random_orthogonal(n, rng)[:, : len(s)]
    v = random_orthogonal(m, rng)[:, : len(s)]
    return (u * s) @ v.T


class TanhMLP(nn.Module):
    """A small smooth decoder ``R^m -> R^n``."""

    def __init__(self, m: int = 5, n: int = 12, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(m, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, n),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ConvDecoder(nn.Module):
    """A small smooth conv decoder ``R^m -> (1, 8, 8)`` images."""

    def __init__(self, m: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(m, 8 * 4 * 4)
        self.up = nn.ConvTranspose2d(8, 4, kernel_size=4, stride=2, padding=1)
        self.out = nn.Conv2d(4, 1, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(z)).reshape(-1, 8, 4, 4)
        return self.out(torch.tanh(self.up(h)))


def finite_difference_jacobian(module: nn.Module, z: torch.Tensor, h: float = 1e-5) -> np.ndarray:
    """Float64 reference Jacobian, column by column, by central differences on a float64 copy.

    Truncation error ``O(h^2) ~ 1e-10`` and rounding ``O(1e-16 / h) ~ 1e-11``: far below the
    float32 error of the method under test.
    """
    ref = copy.deepcopy(module).cpu().double().eval()
    z64 = z.detach().cpu().double()
    cols = []
    with torch.no_grad():
        for j in range(z64.shape[1]):
            step = torch.zeros_like(z64)
            step[:, j] = h
            diff = ref(z64 + step).reshape(len(z64), -1) - ref(z64 - step).reshape(len(z64), -1)
            cols.append((diff / (2 * h)).numpy())
    return np.stack(cols, axis=-1)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on shared cores more threads only contend (a tiny
    model's fit took 90 s with the default threads under load, 5 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def tanh_mlp() -> TanhMLP:
    torch.manual_seed(0)
    return TanhMLP()


@pytest.fixture
def conv_decoder() -> ConvDecoder:
    torch.manual_seed(0)
    return ConvDecoder()


class SoftNearestCentre(nn.Module):
    """``f(z) = sum_j softmax_j(-|z - c_j|^2 / tau) x_j``: its range is the hull of the ``x_j``.

    Centres ``c_j = scale * e_j`` in ``R^J``; the logits reduce to ``2 scale z_j / tau``, so
    ``scale = 1, tau = 1`` is smooth from prior draws, ``scale = 3`` saturates (flat far from
    the right centre: random starts get stuck).
    """

    def __init__(self, images: torch.Tensor, scale: float = 1.0, tau: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("images", images)
        eye = torch.eye(len(images), dtype=images.dtype, device=images.device)
        self.register_buffer("centres", scale * eye)
        self.tau = tau

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        d2 = (z[:, None, :] - self.centres[None]).square().sum(-1)
        return torch.softmax(-d2 / self.tau, dim=1) @ self.images


# ---------------------------------------------------------------- Lightning fixtures
def digits_tensors(n_train: int = 96, n_val: int = 64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Disjoint train / validation digits from ``sklearn.datasets.load_digits``, (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    order = np.random.default_rng(seed).permutation(len(images))
    train = torch.from_numpy(images[order[:n_train]]).unsqueeze(1)
    val = torch.from_numpy(images[order[n_train : n_train + n_val]]).unsqueeze(1)
    return train, val


def digits_loaders(
    n_train: int = 96, n_val: int = 64, batch_size: int = 32, shuffle: bool = True
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    from torch.utils.data import DataLoader, TensorDataset

    train, val = digits_tensors(n_train, n_val)
    return (
        DataLoader(TensorDataset(train), batch_size=batch_size, shuffle=shuffle),
        DataLoader(TensorDataset(val), batch_size=batch_size),
    )


class TinyAutoencoder(L.LightningModule):
    """A tiny Lightning autoencoder on 8 x 8 digits; BatchNorm and dropout in the decoder so that
    a monitor that changed training would show it. Module-level, so ``ddp_spawn`` can pickle it."""

    def __init__(
        self, latent_dim: int = 4, hidden: int = 32, batchnorm: bool = True, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.BatchNorm1d(hidden) if batchnorm else nn.Identity(),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 64),
            nn.Sigmoid(),
            nn.Unflatten(1, (1, 8, 8)),
        )
        self.losses: list[float] = []

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, torch.zeros_like(z)  # (mean, logvar)-style tuple

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = nn.functional.mse_loss(self.decoder(self.encoder(x)), x)
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        self.log("val_loss", nn.functional.mse_loss(self.decoder(self.encoder(x)), x))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class DigitsDataModule(L.LightningDataModule):
    """Train / validation digits as a datamodule (picklable, for ``ddp_spawn``)."""

    def __init__(self, n_train: int = 96, n_val: int = 64, batch_size: int = 32) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size = n_train, n_val, batch_size

    def train_dataloader(self):
        return digits_loaders(self.n_train, self.n_val, self.batch_size, shuffle=False)[0]

    def val_dataloader(self):
        return digits_loaders(self.n_train, self.n_val, self.batch_size)[1]


def make_autoencoder(
    latent_dim: int = 4, hidden: int = 32, batchnorm: bool = True, dropout: float = 0.1
) -> TinyAutoencoder:
    return TinyAutoencoder(latent_dim, hidden, batchnorm, dropout)


def quiet_trainer(**kwargs):
    """A ``Trainer`` on the test device (:func:`accelerator_for`), quiet; ``kwargs`` win."""
    options = {
        **accelerator_for(DEVICE),
        "logger": False,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "max_epochs": 2,
    }
    options.update(kwargs)
    return L.Trainer(**options)


class FixedDecoderModule(L.LightningModule):
    """A Lightning module around a fixed decoder with a known recovery answer (no encoder).

    Training only moves an unrelated scalar, so the decoder, and with it every recovery error, is
    the same at every epoch. ``latent_dim`` is an attribute, as monitors without an encoder need.
    Module-level, so ``ddp_spawn`` can pickle it.
    """

    def __init__(self, decoder: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.scalar = nn.Parameter(torch.ones(()))

    def training_step(self, batch, batch_idx):
        return (self.scalar - batch[0].mean()).square()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", (self.scalar - batch[0].mean()).square())

    def configure_optimizers(self):
        return torch.optim.SGD([self.scalar], lr=0.1)


class ImageDecoder(nn.Module):
    """``decoder`` followed by a reshape of its flat 64 outputs to ``(1, 8, 8)`` digits."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).reshape(-1, 1, 8, 8)


def memorizing_module(train: torch.Tensor) -> FixedDecoderModule:
    """A module whose decoder can only produce the training digits ``train`` (N, 1, 8, 8)."""
    return FixedDecoderModule(ImageDecoder(SoftNearestCentre(train.flatten(1))), len(train))


class PCADecoder(nn.Module):
    """``f(z) = mean + V z``: its range is the affine span of given principal directions
    ``V`` (64, k), so every digit is recovered to its PCA residual, train and held-out alike."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("basis", basis)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean + z @ self.basis.T


def assert_resume_gives_the_same_metrics(make_monitor, tmp_path) -> None:
    """A run resumed from its epoch-1 checkpoint watches the same probe and logs what the
    uninterrupted run logs (``/seconds`` aside). No shuffling and no dropout: a resumed Lightning
    run then trains bit-identically (the global RNG is not in the checkpoint), so any difference
    would be the monitor's."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(ckpt_path=None):
        cb = make_monitor()
        ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
        L.seed_everything(0, verbose=False)
        train, val = digits_loaders(shuffle=False)
        trainer = quiet_trainer(callbacks=[cb, ckpt], max_epochs=3, enable_checkpointing=True)
        trainer.fit(make_autoencoder(dropout=0.0), train, val, ckpt_path=ckpt_path)
        return trainer, cb

    whole, cb_whole = run()
    resumed, cb_resumed = run(ckpt_path=str(tmp_path / "epoch=1-step=6.ckpt"))
    for split in ("train", "val"):
        assert torch.equal(cb_whole.indices[split], cb_resumed.indices[split])
    for key in cb_whole.logged_keys:
        if key.endswith("/seconds"):
            continue
        a, b = whole.callback_metrics[key].item(), resumed.callback_metrics[key].item()
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9, nan_ok=True), key


def read_events(folder):
    """Every scalar, histogram, image and tensor event written under ``folder``, loaded."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    keep_all = {kind: 0 for kind in (ea.SCALARS, ea.HISTOGRAMS, ea.IMAGES, ea.TENSORS)}
    return ea.EventAccumulator(str(folder), size_guidance=keep_all).Reload()


# ------------------------------------------------------------- Meehan et al.'s C_T, written out
def meehan_z(q: np.ndarray, p: np.ndarray, tie_correction: bool = False) -> float:
    """``Z_U`` of generated distances ``q`` against held-out distances ``p``, transcribed from
    Meehan, Chaudhuri & Dasgupta (AISTATS 2020, arXiv:2004.05675), sec. 3: the Mann-Whitney
    ``U = sum_ij 1[q_i > p_j] + 1/2 1[q_i = p_j]`` counted pair by pair, z-scored under the null
    with mean ``mn / 2`` and variance ``mn (m + n + 1) / 12``, and the half-unit continuity
    correction of their reference implementation. ``tie_correction``: scipy's tie-corrected
    asymptotic z instead (``Phi^-1`` of its one-sided p-value)."""
    from scipy import stats

    q, p = np.asarray(q, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if tie_correction:
        pvalue = stats.mannwhitneyu(q, p, alternative="less", method="asymptotic").pvalue
        return float(stats.norm.ppf(pvalue))
    m, n = len(q), len(p)
    u = (q[:, None] > p[None, :]).sum() + 0.5 * (q[:, None] == p[None, :]).sum()
    return float((u - m * n / 2 + 0.5) / np.sqrt(m * n * (m + n + 1) / 12))


def meehan_ct(p_d, p_c, q_d, q_c, cells: int, tau=None, tie_correction: bool = False) -> float:
    """``C_T = sum_{pi in Pi_tau} P_n(pi) Z_U(pi) / sum_{pi in Pi_tau} P_n(pi)`` (Meehan et al.
    (2020), sec. 3) from per-sample distances and cells: ``P_n(pi)`` the held-out share of cell
    ``pi``, ``Pi_tau`` the cells whose generated share ``Q_m(pi)`` is more than ``tau`` (the
    authors' experiments: ``tau = 20 / m``, i.e. more than 20 generated samples), ``Z_U`` from
    :func:`meehan_z`. NaN distances are left out first."""
    p_keep, q_keep = ~np.isnan(p_d), ~np.isnan(q_d)
    p_d, p_c, q_d, q_c = p_d[p_keep], p_c[p_keep], q_d[q_keep], q_c[q_keep]
    m, n = len(q_d), len(p_d)
    tau = 20 / m if tau is None else tau
    total = weight = 0.0
    for cell in range(cells):
        p, q = p_d[p_c == cell], q_d[q_c == cell]
        if len(q) / m > tau and len(p) > 0:
            share = len(p) / n
            total += share * meehan_z(q, p, tie_correction)
            weight += share
    return total / weight if weight else float("nan")


def numpy_distinct_radii(x: np.ndarray, fractions=(0.25, 0.5)) -> np.ndarray:
    """``fractions`` times numpy's median, over the distinct samples of ``x`` (equal in every
    value: one), of the L2 distance to the nearest other distinct sample; flattened, float64."""
    flat = np.unique(np.asarray(x, dtype=np.float64).reshape(len(x), -1), axis=0)
    dist = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    return np.array(fractions) * np.median(dist.min(axis=1))
