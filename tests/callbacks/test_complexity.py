"""GeometryMonitor's complexity family on a ReLU decoder in real (tiny) Lightning runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lightning_memwatch.callbacks import GeometryMonitor
from lightning_memwatch.callbacks.geometry import COMPLEXITY_SEED_OFFSET
from lightning_memwatch.functional import local_complexity
from tests.callbacks.test_geometry import fit, monitor
from tests.conftest import TinyAutoencoder, read_events

STATS = ("train", "val", "gap", "ks_pvalue", "effect", "effect_lower", "effect_upper")
KEYS = {f"memwatch/complexity/{k}" for k in STATS} | {
    f"memwatch/complexity/{k}" for k in ("seconds", "probe_size", "nonfinite", "staleness")
}


class ReluAutoencoder(TinyAutoencoder):
    """The shared tiny autoencoder with ReLU in the decoder (BatchNorm and dropout kept) and in
    the encoder, and a ``decode`` method: hooking the whole module must count the decoder's
    ReLU only."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder[2] = nn.ReLU()
        self.encoder[2] = nn.ReLU()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


def direct_counts(cb: GeometryMonitor, model: ReluAutoencoder) -> dict[str, np.ndarray]:
    """The counts at the probe's encoder latents, computed outside the callback with the
    monitor's documented draws (one generator seeded ``seed + offset``, train then val)."""
    model.eval()
    generator = torch.Generator().manual_seed(cb.seed + COMPLEXITY_SEED_OFFSET)
    counts = {}
    for split in ("train", "val"):
        with torch.no_grad():
            z = model.encoder(cb.inputs[split])
        counts[split] = (
            local_complexity(model.decoder, z, radius=0.1, num_samples=64, generator=generator)
            .cpu()
            .numpy()
        )
    return counts


@pytest.mark.parametrize("decoder", ["decoder", "decode"])
def test_logged_values_equal_a_direct_local_complexity_call(decoder):
    cb = monitor(decoder=decoder, families=("complexity",))
    trainer, model = fit([cb], max_epochs=1, model=ReluAutoencoder())
    got = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("memwatch/")}
    assert set(got) == KEYS == set(cb.logged_keys)
    counts = direct_counts(cb, model)
    train, val = counts["train"], counts["val"]
    assert 0 < train.mean() < 32  # some boundaries cut the balls, not every neuron
    assert got["memwatch/complexity/train"] == pytest.approx(train.mean(), rel=1e-6)
    assert got["memwatch/complexity/val"] == pytest.approx(val.mean(), rel=1e-6)
    assert got["memwatch/complexity/gap"] == pytest.approx(train.mean() - val.mean(), abs=1e-6)
    assert got["memwatch/complexity/ks_pvalue"] == pytest.approx(
        stats.ks_2samp(train, val).pvalue, rel=1e-6
    )
    a, b = train[:, None], val[None, :]
    delta = (a > b).mean() - (a < b).mean()  # Cliff's delta, numpy
    assert got["memwatch/complexity/effect"] == pytest.approx(delta, abs=1e-6)
    assert (
        got["memwatch/complexity/effect_lower"] <= delta <= got["memwatch/complexity/effect_upper"]
    )
    assert got["memwatch/complexity/nonfinite"] == 0
    assert got["memwatch/complexity/probe_size"] == 12


def test_tensorboard_has_the_per_sample_count_histograms(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    cb = monitor(families=("spectrum", "complexity"))
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    _, model = fit([cb], max_epochs=1, model=ReluAutoencoder(), logger=logger)
    logger.experiment.flush()
    events = read_events(tmp_path / "run" / "version_0")
    assert set(cb.logged_keys) <= set(events.Tags()["scalars"])
    assert KEYS <= set(cb.logged_keys)
    for split, counts in direct_counts(cb, model).items():
        histogram = events.Histograms(f"memwatch/complexity/samples/{split}")[-1].histogram_value
        assert (histogram.num, histogram.sum) == (len(counts), pytest.approx(counts.sum()))


def test_complexity_is_opt_in():
    assert GeometryMonitor().families == ("spectrum", "density")
    assert not any("complexity" in key for key in GeometryMonitor().logged_keys)


def test_a_decoder_without_piecewise_linear_activations_fails_at_setup():
    cb = monitor(families=("spectrum", "complexity"))
    with pytest.raises(ValueError, match=r"piecewise-linear decoder `decoder`.*nn\.ReLU.*families"):
        fit([cb], max_epochs=1)  # the shared autoencoder's decoder is Tanh


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"complexity_radius": 0.0}, "complexity_radius"),
        ({"complexity_radius": float("inf")}, "complexity_radius"),
        ({"complexity_samples": -1}, "complexity_samples"),
        ({"complexity_samples": True}, "complexity_samples"),
        ({"families": ("complexity", "likelihood")}, "families"),
    ],
)
def test_bad_complexity_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeometryMonitor(**kwargs)


def test_a_method_decoder_that_runs_no_hooked_activation_says_so():
    """Setup passes (the module has a ReLU, in its encoder) but ``decode`` runs none: the first
    measurement names the problem instead of logging zeros."""
    model = ReluAutoencoder()
    model.decoder[2] = nn.Tanh()
    cb = monitor(decoder="decode", families=("complexity",))
    with pytest.raises(ValueError, match=r"none ran.*F\.relu"):
        fit([cb], max_epochs=1, model=model)
