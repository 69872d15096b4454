"""``benchmarks/detection.py``: the smoke run prints its tables end to end, the cache gives the
same tables, and a rule fires as ``MemorizationEarlyStopping`` counts."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
ARGS = ["--fast", "--seeds", "2", "--classes", "mlp,gan", "--long", "--gan-probes", "32,64"]


@pytest.fixture(scope="module")
def detection():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("detection")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def smoke(detection, tmp_path_factory):
    out = tmp_path_factory.mktemp("detection")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rows = detection.main([*ARGS, "--out", str(out)])
    return out, printed.getvalue(), rows


def test_fast_run_prints_every_table(detection, smoke):
    out, printed, rows = smoke
    tables = importlib.import_module("detection_tables")
    classes = {n: c for n, c in importlib.import_module("detection_classes").load().items()}
    rules = tables.all_rules(classes)
    assert [row["rule"] for row in rows["inf"]] == [rule.name for rule in rules]
    header = next(line for line in printed.splitlines() if line.startswith("| rule | mlp"))
    assert "mlp det, FA" in header and "gan det, FA" in header and "conv" not in header
    assert "generalize_long FA" in header and "generalize_9x FA" in header
    for rule in rules:
        assert any(line.startswith(f"| {rule.name} |") for line in printed.splitlines())
    for title in ("t chosen on the even seeds", "Time to detection", "by probe size"):
        assert title in printed
    assert "| gan | memorize | 2 |" in printed  # the runs summary, with the ground truth
    # seeds 0 and 1: mlp 4 kinds, gan 2 kinds and its generalizing runs at probe 64
    cached = sorted(p.name for p in (out / "budget_inf").iterdir())
    assert len(cached) == 2 * (4 + 2 + 1) and "gan_generalize_1_probe64.json" in cached
    run = json.loads((out / "budget_inf" / "gan_memorize_0.json").read_text())
    assert {"copy_share", "closer_than_heldout", "heldout_distance"} <= set(
        run["epochs"][0]["truth"]
    )
    assert run["val_loss"] == [run["epochs"][0]["truth"]["heldout_distance"]]
    # the GAN never gets a Lightning val_loss; the likelihood rules do not apply to it
    likelihood = next(r for r in rows["inf"] if r["rule"] == "van den Burg: likelihood gap > 0")
    assert likelihood["classes"]["gan"]["memorize"] is None
    assert likelihood["classes"]["mlp"]["memorize"][1] == 2


def test_from_cache_gives_the_same_rows(detection, smoke):
    out, _, rows = smoke
    with contextlib.redirect_stdout(io.StringIO()):
        again = detection.main(["--from-cache", *ARGS[1:], "--budgets", "inf", "--out", str(out)])
    assert again["inf"] == rows["inf"]


def _checks(values, key="memwatch/x"):
    return [{"epoch": e, "scalars": {key: v}, "samples": {}} for e, v in values]


@pytest.mark.parametrize(
    ("values", "patience", "expected"),
    [
        ([(0, 0.5), (1, 0.001), (2, 0.5)], 0, 1),
        ([(0, 0.001), (1, 0.5), (2, 0.001)], 1, None),  # a failing check resets the count
        ([(0, 0.001), (1, math.nan), (2, 0.001)], 1, 2),  # NaN neither counts nor resets
        ([(3, 0.001), (5, 0.001), (7, 0.001)], 2, 7),
    ],
)
def test_fired_epoch_counts_like_the_stopper(detection, values, patience, expected):
    rules = importlib.import_module("detection_rules")
    rule = rules.Rule("x", "paper", rules.scalar_rule("memwatch/x", 0.01, "below"), patience)
    assert rules.fired_epoch(rule, _checks(values)) == expected


def test_registry_loads_every_class_module(detection):
    classes = importlib.import_module("detection_classes").load()
    assert list(classes) == ["mlp", "conv", "glo", "gan"]
    for model_class in classes.values():
        assert {"memorize", "generalize"} <= set(model_class.plans)
        assert model_class.plans["memorize"].n_train == 32
        assert model_class.plans["generalize"].n_train == 1400
    assert classes["gan"].copy_key == "copy_share" and classes["mlp"].copy_key is None
