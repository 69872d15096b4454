"""``examples/cli.py`` + ``examples/config.yaml``: the demo configured from YAML by LightningCLI."""

from __future__ import annotations

import importlib

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
        "MemorizationEarlyStopping",
    ]
    geometry, recovery, stopper = callbacks
    assert geometry.radii == (0.25, 0.5) and geometry.encoder_name == "encode"
    assert recovery.encoder_name == "encode"
    assert stopper.monitor in recovery.logged_keys and stopper.report_only
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
