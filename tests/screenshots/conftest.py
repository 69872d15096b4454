"""The screenshot tests are opt-in: ``python -m pytest tests/screenshots --screenshots``.

They need chromium, a system package that CI does not install (on Debian ``apt-get install -y
chromium``), and take minutes (a docs build, the demo, TensorBoard). Without ``--screenshots``
their files are not collected at all, so a default run neither runs nor skips them.
"""

from __future__ import annotations

from pathlib import Path


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--screenshots",
        action="store_true",
        default=False,
        help="run tests/screenshots: the docs and TensorBoard in headless chromium (minutes)",
    )


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """Leave out this folder's test files unless ``--screenshots`` is given."""
    if collection_path.name.startswith("test_") and collection_path.suffix == ".py":
        return None if config.getoption("--screenshots", default=False) else True
    return None
