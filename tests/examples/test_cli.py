"""``examples/cli.py`` + ``examples/config.yaml``: the demo's run A configured from YAML by
LightningCLI, printing the demo's table."""

from __future__ import annotations

import importlib
import math
import re

import pytest
import torch
import yaml

from tests.examples.conftest import EXAMPLES, load_example

CONFIG = EXAMPLES / "config.yaml"


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_config_names_the_memwatch_callbacks_with_valid_arguments():
    """Read with plain YAML: every ``class_path`` imports and takes its ``init_args``."""
    config = yaml.safe_load(CONFIG.read_text())
    callbacks = [_class(c["class_path"])(**c["init_args"]) for c in config["trainer"]["callbacks"]]
    assert [type(c).__name__ for c in callbacks] == [
        "GeometryMonitor",
        "RecoveryMonitor",
        "EffectAgreement",
        "MemorizationEarlyStopping",
        "MemorizationEarlyStopping",
    ]
    geometry, recovery, agreement, stopper, ks_stopper = callbacks
    assert geometry.radii == (0.25, 0.5) and geometry.encoder_name == "encode"
    assert recovery.encoder_name == "encode"
    assert stopper.monitor in agreement.logged_keys and stopper.report_only
    assert (stopper.threshold, stopper.mode) == (0.3, "above")
    assert ks_stopper.monitor in recovery.logged_keys and ks_stopper.report_only
    digits_vae = load_example("digits_vae")
    model = digits_vae.DigitsVAE(**config["model"])
    data = digits_vae.DigitsDataModule(**config["data"])
    assert model.latent_dim == 8 and len(data.train_images) == 32


def test_cli_fits_one_epoch_from_the_yaml(tmp_path):
    """LightningCLI on a copy of the YAML cut to one epoch, every callback measuring at once."""
    config = yaml.safe_load(CONFIG.read_text())
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    for callback in config["trainer"]["callbacks"]:
        args = callback["init_args"]
        if "probe_size" in args:
            args.update(probe_size=8, every_n_epochs=1)
        if callback["class_path"].endswith("RecoveryMonitor"):
            args.update(steps=5, restarts=1)
    small = tmp_path / "config.yaml"
    small.write_text(yaml.safe_dump(config))
    cli = load_example("cli").main(
        ["fit", "--config", str(small), "--trainer.max_epochs=1", "--data.passes=1"]
    )
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.current_epoch == 1
    for key in (
        "memwatch/spectrum/log_volume/gap",
        "memwatch/density/dip/train",
        "memwatch/recovery/mre_gap",
        "memwatch/recovery/ks_pvalue",
    ):
        assert key in metrics, key
    assert metrics["memwatch/recovery/probe_size"] == 8
    assert (tmp_path / "cli").is_dir()


def test_config_is_the_demos_run_a():
    """Every setting the demo gives run A (``vae_memorization.runs`` / ``callbacks`` /
    ``train`` / ``digits_vae.cpu_trainer``) is the YAML's."""
    demo = load_example("vae_memorization")
    config = yaml.safe_load(CONFIG.read_text())
    run_a = demo.runs(fast=False)[0]
    assert config["seed_everything"] == 0
    trainer = config["trainer"]
    assert trainer["max_epochs"] == run_a.epochs == 60
    assert trainer["num_sanity_val_steps"] == 0 and trainer["enable_checkpointing"] is False
    assert config["data"] == {
        "n_train": run_a.n_train,
        "n_val": 256,
        "batch_size": run_a.batch_size,
        "passes": run_a.passes,
        "seed": 0,
    }
    assert config["model"]["latent_dim"] == 8
    defaults = load_example("digits_vae").DigitsVAE().hparams
    assert {k: v for k, v in config["model"].items() if k != "latent_dim"} == {
        k: defaults[k] for k in ("hidden", "lr", "beta")
    }
    from_yaml = [_class(c["class_path"])(**c["init_args"]) for c in trainer["callbacks"]]
    from_demo = demo.callbacks(run_a, fast=False, seed=0)
    for yaml_cb, demo_cb in zip(from_yaml, from_demo, strict=True):
        assert type(yaml_cb) is type(demo_cb)
        assert yaml_cb.state_key == demo_cb.state_key
    attributes = (
        "probe_size",
        "every_n_epochs",
        "max_overhead",
        "seed",
        "encoder_name",
        "decoder_name",
        "radii",
        "steps",
        "restarts",
        "monitor",
        "threshold",
        "mode",
        "patience",
        "report_only",
        "log_key",
        "families",
        "key",
    )
    for yaml_cb, demo_cb in zip(from_yaml, from_demo, strict=True):
        for name in attributes:
            if hasattr(demo_cb, name):
                assert getattr(yaml_cb, name) == getattr(demo_cb, name), (type(demo_cb), name)
    assert from_demo[1].steps == 30 and from_demo[0].every_n_epochs == 6


def _table_rows(stdout: str) -> dict[str, list[float]]:
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"\| (spectrum|density|recovery) / (.+?) \|(.*)\|$", line)
        if match:
            rows[f"{match[1]} / {match[2]}"] = [float(c) for c in match[3].split("|")]
    return rows


def test_cli_prints_the_demo_table_and_measures_what_the_demo_measures(tmp_path, capsys):
    """Six epochs (one measurement, at epoch 5) from the YAML with command-line overrides: the
    printed table is the demo's, for one run, and its values are the demo's own ``train`` of the
    same shortened run A (same seed, same process and threads)."""
    demo = load_example("vae_memorization")
    threads = str(torch.get_num_threads())
    cli = load_example("cli").main(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--trainer.max_epochs=6",
            "--data.passes=1",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'cli'}",
            f"--threads={threads}",
        ]
    )
    out = capsys.readouterr().out
    assert out.count("| family / key | A train | A val | A gap | A KS p |") == 1
    rows = _table_rows(out)
    assert len(rows) == len(demo.ROWS) == 7 and all(len(r) == 4 for r in rows.values())
    assert "Early-stopping rule (memwatch/agreement/bound > 0.3 at one check" in out
    assert "Early-stopping rule (memwatch/recovery/ks_pvalue < 0.01 at 2 checks in a row" in out
    assert len(re.findall(r"report only\): (did not fire|fired at epoch \d+)", out)) == 2
    assert f"Curves: tensorboard --logdir {tmp_path / 'cli'}" in out

    metrics = demo.final_metrics(cli.trainer)
    expected_rows = _table_rows(demo.table({"A": metrics}))
    assert rows == expected_rows  # the table is printed from the trainer's final values

    short_a = demo.Run("A_32_digits", 32, 8, 1, 6, 6)
    reference = demo.train(short_a, tmp_path / "demo", fast=False, seed=0)["metrics"]
    keys = [k for k in reference if k.startswith("memwatch/") and not k.endswith("/seconds")]
    assert "memwatch/recovery/ks_pvalue" in keys and "memwatch/density/dip/gap" in keys
    for key in keys:
        assert metrics[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-9, nan_ok=True), key
    assert "memwatch/agreement/bound" in keys
    assert math.isfinite(metrics["memwatch/recovery/mre_gap"])
