"""Sphinx configuration of the lightning-memwatch documentation.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html``; the code examples of the
pages run with ``sphinx-build -W -b doctest docs docs/_build/doctest``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning_memwatch  # noqa: E402

project = "lightning-memwatch"
author = "lightning-memwatch contributors"
copyright = "lightning-memwatch contributors"
release = lightning_memwatch.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "make_screenshots.py"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"lightning-memwatch {release}"
html_static_path = ["_static"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# The docstrings' own ``>>>`` examples run under pytest (``--doctest-modules``); the doctest
# builder runs the pages' ``testcode`` / ``doctest`` blocks.
doctest_test_doctest_blocks = ""
doctest_global_setup = "import torch\ntorch.manual_seed(0)\ntorch.set_num_threads(1)\n"
