"""Smoke run of the K-fold memorization example on real digits (``--fast``)."""

from __future__ import annotations

import numpy as np
import torch

from tests.examples.conftest import load_example


def test_kfold_memorization_fast(tmp_path, capsys):
    import matplotlib.image

    module = load_example("kfold_memorization")
    out = module.main(["--fast", "--out", str(tmp_path), "--top", "4"])
    printed = capsys.readouterr().out
    assert "| rank | index | label | score |" in printed

    result = out["result"]
    assert result.scores.shape == (40,) and torch.isfinite(result.scores).all()
    torch.testing.assert_close(result.scores, result.log_px_in - result.log_px_out)
    # the listed digits are the highest scores, in order, each printed with its label
    top = out["top"]
    assert len(top) == 4 and set(top) <= set(range(40))
    assert result.scores[top].tolist() == sorted(result.scores.tolist(), reverse=True)[:4]
    for i in top:
        assert f"| {i} | {out['labels'][i]} | {result.scores[i].item():.2f} |" in printed
    # 2 folds: every digit has one model in and one out, log p(x) of 64 Bernoulli pixels < 0
    assert (result.log_px < 0).all() and result.log_px.shape == (1, 2, 40)

    image = matplotlib.image.imread(out["figure"])
    assert out["figure"] == tmp_path / "kfold_memorization.png"
    assert image.ndim == 3 and image.shape[0] > 100 and np.ptp(image) > 0
