"""``benchmarks/detection.py``: the smoke run prints its tables end to end, the cache gives the
same tables, and a rule fires as ``MemorizationEarlyStopping`` counts."""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


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
        rows = detection.main(["--fast", "--long", "--out", str(out)])
    return out, printed.getvalue(), rows


def test_fast_run_prints_one_row_per_rule_and_class(detection, smoke):
    out, printed, rows = smoke
    rules = importlib.import_module("detection_rules").rules()
    assert [row["rule"] for row in rows["inf"]] == [rule.name for rule in rules]
    header = next(line for line in printed.splitlines() if line.startswith("| rule |"))
    for model_class in ("mlp", "conv", "glo"):
        assert f"{model_class} det" in header and f"{model_class} FA" in header
    table_rows = [line for line in printed.splitlines() if line.startswith("| ")]
    for rule in rules:
        assert any(line.startswith(f"| {rule.name} |") for line in table_rows)
    assert "3x-long FA (mlp, glo)" in header and "9x-long FA (mlp, glo)" in header
    # one cached run per class and kind (+ the two long generalizing runs of mlp and glo)
    cached = sorted(p.name for p in (out / "budget_inf").iterdir())
    assert len(cached) == 10 and "glo_generalize_9x_0.json" in cached
    for row in rows["inf"]:
        for cell in row["classes"].values():
            assert cell["memorize"][1] == 1 and cell["generalize"][1] == 1


def test_from_cache_gives_the_same_rows(detection, smoke):
    out, _, rows = smoke
    with contextlib.redirect_stdout(io.StringIO()):
        again = detection.main(
            ["--from-cache", "--long", "--seeds", "1", "--budgets", "inf", "--out", str(out)]
        )
    assert again["inf"] == rows["inf"]


def _checks(values):
    return [{"epoch": e, "scalars": {"memwatch/x": v}, "samples": {}} for e, v in values]


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
