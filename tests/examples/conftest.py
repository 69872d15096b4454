"""Fixtures of the example tests: load an example by path, run the main demo once at --fast."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scalar_events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of one TensorBoard run, ``{tag: [(step, value), ...]}``, read here with
    TensorBoard's ``EventAccumulator`` (not through the example's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


class ConsoleRecords(logging.Handler):
    """The records that reach the handlers of Lightning's ``lightning.pytorch`` logger, i.e.
    what its console handler prints (after every logger level on the way has let them pass)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="session")
def demo_fast(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``examples/vae_memorization.py --fast`` run once: module, results, stdout, log dir and
    the messages Lightning's console handler received (``console``)."""
    module = load_example("vae_memorization")
    out = tmp_path_factory.mktemp("memwatch_logs")
    buffer = io.StringIO()
    console = ConsoleRecords()
    lightning_logger = logging.getLogger("lightning.pytorch")
    lightning_logger.addHandler(console)
    try:
        with contextlib.redirect_stdout(buffer):
            results = module.main(["--fast", "--out", str(out)])
    finally:
        lightning_logger.removeHandler(console)
    return SimpleNamespace(
        module=module, results=results, stdout=buffer.getvalue(), out=out, console=console.messages
    )
