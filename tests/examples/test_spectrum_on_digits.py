"""Smoke run of ``examples/spectrum_on_digits.py`` on real digits (``--fast``)."""

from __future__ import annotations

import math

from tests.examples.conftest import load_example


def test_spectrum_on_digits_fast(capsys):
    module = load_example("spectrum_on_digits")
    results = module.main(["--fast"])
    out = capsys.readouterr().out
    assert "| log_volume (psi) |" in out
    for split in ("train", "held-out"):
        values = results[split]
        assert all(math.isfinite(v) for v in values.values()), values
        assert 1 <= values["intrinsic_dim"] <= 8  # latent dimension 8
        assert 1 <= values["local_rank (nu)"] <= 8
        assert values["log_condition"] >= 0
