"""README.md leads with the commands that CI and a newcomer run; keep them true."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fenced_commands(text: str) -> list[str]:
    blocks = re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    (command,) = re.findall(r"^TEST_COMMAND='(.*)'$", ci, flags=re.M)
    assert command in _fenced_commands((ROOT / "README.md").read_text())


def test_readme_leads_with_demo_then_tests():
    commands = _fenced_commands((ROOT / "README.md").read_text())
    demo, tests = commands[0], commands[1]
    (script,) = re.findall(r"python (examples/\S+\.py)", demo)
    assert (ROOT / script).is_file()
    assert "pytest" in tests and "pip install" in demo and "pip install" in tests


def test_readme_yaml_callbacks_instantiate():
    """The LightningCLI snippet names real classes with arguments they accept."""
    import importlib

    import yaml

    text = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    callbacks = yaml.safe_load(block)["trainer"]["callbacks"]
    built = []
    for spec in callbacks:
        module, name = spec["class_path"].rsplit(".", 1)
        built.append(getattr(importlib.import_module(module), name)(**spec["init_args"]))
    names = [type(cb).__name__ for cb in built]
    assert names == ["GeometryMonitor", "RecoveryMonitor", "MemorizationEarlyStopping"]
    assert built[2].monitor in built[1].logged_keys
