"""``benchmarks/detection.py``: the smoke run prints its tables end to end, the cache gives the
same tables, and a rule fires as ``MemorizationEarlyStopping`` counts."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math

import pytest

ARGS = ["--fast", "--seeds", "2", "--classes", "mlp,gan,ddpm", "--long", "--gan-probes", "32,64"]


@pytest.fixture(scope="module")
def detection(benchmarks_path):
    return importlib.import_module("detection")


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
    assert "ddpm det, FA" in header
    assert "generalize_long FA" in header and "generalize_9x FA" in header
    for rule in rules:
        assert any(line.startswith(f"| {rule.name} |") for line in printed.splitlines())
    for title in ("t chosen on the even seeds", "Time to detection", "by probe size"):
        assert title in printed
    assert "| gan | memorize | 2 |" in printed  # the runs summary, with the ground truth
    # seeds 0 and 1: mlp 4 kinds, gan 2 kinds and its generalizing runs at probe 64, ddpm 2
    cached = sorted(p.name for p in (out / "budget_inf").iterdir())
    assert len(cached) == 2 * (4 + 2 + 1 + 2) and "gan_generalize_1_probe64.json" in cached
    run = json.loads((out / "budget_inf" / "gan_memorize_0.json").read_text())
    assert {"copy_share", "closer_than_heldout", "heldout_distance"} <= set(
        run["epochs"][0]["truth"]
    )
    assert run["val_loss"] == [run["epochs"][0]["truth"]["heldout_distance"]]
    # the GAN never gets a Lightning val_loss; the likelihood rules do not apply to it
    likelihood = next(r for r in rows["inf"] if r["rule"] == "van den Burg: likelihood gap > 0")
    assert likelihood["classes"]["gan"]["memorize"] is None
    assert likelihood["classes"]["mlp"]["memorize"][1] == 2


def test_ddpm_agreement_is_the_live_effect_agreement(detection, smoke):
    """On the DDPM the recommended rule reads the diffusion loss and psi: offline, from the
    recorded per-sample values, the weaker of the two upper bounds is the bound the attached
    ``EffectAgreement`` logged at that check; the copy-share truth runs on the DDIM samples."""
    out, _, rows = smoke
    rules = importlib.import_module("detection_rules")
    run = json.loads((out / "budget_inf" / "ddpm_memorize_0.json").read_text())
    assert run["checks"] and {"copy_share", "heldout_loss", "train_loss"} <= set(
        run["epochs"][0]["truth"]
    )
    assert run["val_loss"] == [run["epochs"][0]["truth"]["heldout_loss"]]
    for check in run["checks"]:
        uppers = [rules.effect(check, d)[2] for d in rules.AGREEMENT_PAIRS[1]]
        offline = min(-u for u in uppers)
        assert offline == pytest.approx(check["scalars"]["memwatch/agreement/bound"], abs=1e-6)
        for t in (offline - 0.01, offline + 0.01):
            assert rules.agreement_rule(t)(check, check) == float(offline > t)
    recommended = next(r for r in rows["inf"] if r["rule"].startswith("2 of 2 (recovery+spec"))
    assert recommended["classes"]["ddpm"]["memorize"] is None  # the decoder pair: not on ddpm


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
    assert list(classes) == ["mlp", "conv", "glo", "gan", "ddpm"]
    for model_class in classes.values():
        assert {"memorize", "generalize"} <= set(model_class.plans)
        assert model_class.plans["memorize"].n_train == 32
        assert model_class.plans["generalize"].n_train == 1400
    assert classes["gan"].copy_key == "copy_share" and classes["mlp"].copy_key is None
    assert classes["ddpm"].copy_key == "copy_share" and classes["ddpm"].val_key == "heldout_loss"
