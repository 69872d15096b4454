"""DataCopying: what it holds gives C_T and the copy fractions of the pooled samples, whatever
the batches (ranks) they came in, against numpy / scipy references written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_memwatch.metrics import DataCopying
from tests.devices import DEVICE, on_device


def reference_ct(p_d, p_c, q_d, q_c, cells: int) -> float:
    total = weight = 0.0
    for cell in range(cells):
        p, q = p_d[p_c == cell], q_d[q_c == cell]
        if len(q) >= 20 and len(p):
            pvalue = stats.mannwhitneyu(q, p, alternative="less", method="asymptotic").pvalue
            total += len(p) * stats.norm.ppf(pvalue)
            weight += len(p)
    return total / weight


def test_compute_equals_the_pooled_reference_in_any_batching(rng):
    cells = 3
    p_d, p_c = rng.gamma(2.0, size=90), rng.integers(cells, size=90)
    q_d, q_c = rng.gamma(1.6, size=150), rng.integers(cells, size=150)
    q_c[:5] = 0  # cell 0 has at least 20 generated samples ...
    q_c[q_c == 2] = 1  # ... cell 2 none
    p_copy, q_copy = rng.random(90) < 0.3, rng.random(150) < 0.6
    q_d[7] = np.nan  # a non-finite sample: counted, left out
    want = reference_ct(p_d, p_c, np.delete(q_d, 7), np.delete(q_c, 7), cells)
    results = []
    for shards in (1, 2, 3):  # as many "ranks", each a strided share, in reversed order
        metric = DataCopying(cells).to(DEVICE)
        for rank in reversed(range(shards)):
            for name, d, c, k in (("heldout", p_d, p_c, p_copy), ("generated", q_d, q_c, q_copy)):
                part = slice(rank, None, shards)
                metric.update(
                    on_device(d[part]),
                    on_device(c[part]),
                    on_device(k[part]),
                    name,
                )
        results.append({key: value.item() for key, value in metric.compute().items()})
    for out in results:
        assert out["ct"] == pytest.approx(want, rel=1e-9)
        assert out["copy_fraction"] == pytest.approx(np.delete(q_copy, 7).mean(), rel=1e-12)
        assert out["heldout_copy_fraction"] == pytest.approx(p_copy.mean(), rel=1e-12)
        assert out["nonfinite"] == 1


def test_scalars_reset_and_an_empty_metric_is_nan():
    metric = DataCopying(2).to(DEVICE)
    with pytest.warns(UserWarning, match="before the ``update``"):
        out = metric.compute()
    assert out["ct"].isnan() and out["copy_fraction"].isnan() and out["nonfinite"] == 0
    ones, zeros = torch.ones(3, device=DEVICE), torch.zeros(3, dtype=torch.long, device=DEVICE)
    metric.update(ones, zeros, ones, "heldout")
    assert metric.scalars()["heldout_copy_fraction"].dtype == torch.float32
    assert metric.samples("heldout", "distances").numel() == 0  # reset


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"cells": 0}, "`cells`"), ({"cells": 2, "tau": 1.5}, "`tau`")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataCopying(**kwargs)
    with pytest.raises(ValueError, match="`sample`"):
        DataCopying(2).update(torch.ones(1), torch.zeros(1), torch.ones(1), "train")
