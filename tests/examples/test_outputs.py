"""Every example writes under one gitignored folder, ``outputs/``, unless told otherwise."""

from __future__ import annotations

import re

import yaml

from tests.examples.conftest import EXAMPLES

#: (example, argument) of every output path an example writes by default.
OUTPUT_ARGUMENTS = (
    ("vae_memorization.py", "--out"),
    ("plot_curves.py", "--out"),
    ("plot_curves.py", "--logdir"),
    ("kfold_memorization.py", "--out"),
)


def default_of(source: str, argument: str) -> str:
    match = re.search(
        rf'add_argument\(\s*"{argument}",[^)]*?default=Path\("([^"]+)"\)', source, re.DOTALL
    )
    assert match, argument
    return match[1]


def test_default_outputs_are_under_outputs():
    for example, argument in OUTPUT_ARGUMENTS:
        default = default_of((EXAMPLES / example).read_text(), argument)
        assert default.startswith("outputs/"), (example, argument, default)
    config = yaml.safe_load((EXAMPLES / "config.yaml").read_text())
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == "outputs/memwatch_logs"


def test_outputs_is_gitignored():
    """A ``outputs/`` line (no leading slash: any ``outputs`` folder, wherever the examples run)."""
    lines = (EXAMPLES.parent / ".gitignore").read_text().splitlines()
    assert "outputs/" in lines
