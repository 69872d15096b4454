"""Sphinx configuration of the lightning-memwatch documentation.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html``; the code examples of the
pages run with ``sphinx-build -W -b doctest docs docs/_build/doctest``.
"""

from __future__ import annotations

import re
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
# tables that fit the page at 1,280 px: keys break inside, numbers never (docs/_static)
html_css_files = ["memwatch.css"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
# A method without a docstring of its own is not documented with its base class's: memwatch's
# callbacks override Lightning's hooks, whose docstrings describe Lightning, not memwatch.
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False


def lightning_hook_names() -> frozenset[str]:
    """The names of ``lightning.pytorch.Callback``'s hooks and state methods (``on_fit_start``,
    ``setup``, ``state_dict``, ``state_key``, ...): called by the Trainer, not by a user."""
    from lightning.pytorch import Callback

    return frozenset(name for name in vars(Callback) if not name.startswith("__"))


def skip_lightning_hooks(app, what, name, obj, skip, options):
    """Leave out a callback's implementations of Lightning's hooks: the API page documents what
    memwatch adds (its constructor, properties and methods), not the Trainer's protocol."""
    from lightning.pytorch import Callback

    function = getattr(obj, "fget", obj)  # a property (``state_key``) by its getter
    owner = getattr(function, "__qualname__", "").rpartition(".")[0]
    cls = getattr(sys.modules.get(getattr(function, "__module__", "")), owner, None)
    if isinstance(cls, type) and issubclass(cls, Callback) and name in lightning_hook_names():
        return True
    return skip


#: An inline literal's text as the HTML writer puts it out: ``<span class="pre">...</span>``.
_INLINE_CODE = re.compile(r'(<span class="pre">)([^<]*)(</span>)')


def break_keys_after_slashes(app, pagename, templatename, context, doctree):
    """Let a long key wrap after its ``/`` and ``,`` (an HTML ``<wbr>``, which a copy of the
    text leaves out) rather than widen its table column or break inside a word."""
    if "body" in context:
        context["body"] = _INLINE_CODE.sub(
            lambda m: m[1] + re.sub(r"([/,])(?=.)", r"\1<wbr>", m[2]) + m[3], context["body"]
        )


def setup(app):
    app.connect("autodoc-skip-member", skip_lightning_hooks)
    app.connect("html-page-context", break_keys_after_slashes)
    return {"parallel_read_safe": True}


# The docstrings' own ``>>>`` examples run under pytest (``--doctest-modules``); the doctest
# builder runs the pages' ``testcode`` / ``doctest`` blocks.
doctest_test_doctest_blocks = ""
doctest_global_setup = "import torch\ntorch.manual_seed(0)\ntorch.set_num_threads(1)\n"
