"""DataCopying: what it holds gives C_T and the copy fractions of the pooled samples, whatever
the batches (ranks) they came in, against the paper's C_T written out in ``tests/conftest.py``
(scipy's tie-corrected z for the variant) and numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_memwatch.metrics import DataCopying
from tests.conftest import meehan_ct
from tests.devices import DEVICE, on_device


@pytest.mark.parametrize("tie_correction", [False, True])
def test_compute_equals_the_pooled_reference_in_any_batching(tie_correction, rng):
    cells = 3
    p_d, p_c = rng.gamma(2.0, size=90), rng.integers(cells, size=90)
    q_d, q_c = rng.gamma(1.6, size=150), rng.integers(cells, size=150)
    q_d[:40] = 0.0  # exact copies: tied distances
    q_c[:25] = 0  # cell 0 has more than 20 generated samples ...
    q_c[q_c == 2] = 1  # ... cell 2 none
    p_copy, q_copy = rng.random(90) < 0.3, rng.random(150) < 0.6
    q_d[7] = np.nan  # a non-finite sample: counted, left out
    want = meehan_ct(p_d, p_c, np.delete(q_d, 7), np.delete(q_c, 7), cells, None, tie_correction)
    results = []
    for shards in (1, 2, 3):  # as many "ranks", each a strided share, in reversed order
        metric = DataCopying(cells, tie_correction=tie_correction).to(DEVICE)
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
    [
        ({"cells": 0}, "`cells`"),
        ({"cells": 2, "tau": 1.5}, "`tau`"),
        ({"cells": 2, "tie_correction": None}, "`tie_correction`"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataCopying(**kwargs)
    with pytest.raises(ValueError, match="`sample`"):
        DataCopying(2).update(torch.ones(1), torch.zeros(1), torch.ones(1), "train")
