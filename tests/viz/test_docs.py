"""The documentation reads at a glance: the API page without Lightning's hooks, keys that wrap
after their slashes, numbers that do not wrap. The layout itself, measured in a browser at
1,280 px, is checked by the opt-in screenshot tests (``tests/screenshots``)."""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def load_conf():
    spec = importlib.util.spec_from_file_location("memwatch_docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def test_api_page_documents_memwatch_members_and_no_lightning_hook(tmp_path: Path) -> None:
    """``docs/api.md`` built with ``docs/conf.py`` (in-process, html): the callbacks' own
    members are documented, none of ``lightning.pytorch.Callback``'s hooks or state methods."""
    from lightning.pytorch import Callback
    from sphinx.application import Sphinx

    import lightning_memwatch

    src = tmp_path / "src"
    (src / "_static").mkdir(parents=True)
    shutil.copy(DOCS / "conf.py", src / "conf.py")
    shutil.copy(DOCS / "_static" / "memwatch.css", src / "_static" / "memwatch.css")
    shutil.copy(DOCS / "api.md", src / "index.md")
    warnings = io.StringIO()
    app = Sphinx(src, src, tmp_path / "html", tmp_path / "doctrees", "html",
                 status=None, warning=warnings, freshenv=True)  # fmt: skip
    app.build()
    assert warnings.getvalue() == ""
    page = (tmp_path / "html" / "index.html").read_text()
    members = re.findall(r'id="lightning_memwatch\.([A-Z]\w*)\.(\w+)"', page)
    documented = {cls for cls, _ in members}
    callbacks = {
        name
        for name in lightning_memwatch.__all__
        if isinstance(cls := getattr(lightning_memwatch, name), type) and issubclass(cls, Callback)
    }
    hooks = {name for name in vars(Callback) if not name.startswith("__")}
    assert {"on_train_epoch_end", "setup", "state_dict", "state_key"} <= hooks
    assert {"GeometryMonitor", "MemorizationEarlyStopping"} <= documented & callbacks
    assert ("GeometryMonitor", "radii") in members
    assert ("MemorizationEarlyStopping", "stopped_epoch") in members
    assert [(cls, name) for cls, name in members if cls in callbacks and name in hooks] == []


def test_keys_wrap_after_slashes_and_commas_only_inside_inline_code() -> None:
    conf = load_conf()
    body = (
        '<p>see docs/settings.md: <code class="docutils literal notranslate">'
        '<span class="pre">memwatch/recovery/{train,val}</span></code> and '
        '<span class="pre">a/</span></p>'
    )
    context = {"body": body}
    conf.break_keys_after_slashes(None, "measurements", "page.html", context, None)
    assert context["body"] == (
        '<p>see docs/settings.md: <code class="docutils literal notranslate">'
        '<span class="pre">memwatch/<wbr>recovery/<wbr>{train,<wbr>val}</span></code> and '
        '<span class="pre">a/</span></p>'
    )
    conf.break_keys_after_slashes(None, "search", "search.html", {}, None)  # no body: no-op


def test_the_stylesheet_is_added_and_keeps_numbers_whole() -> None:
    conf = load_conf()
    assert conf.html_css_files == ["memwatch.css"]
    css = (DOCS / "_static" / "memwatch.css").read_text()
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)  # comments out
    rules = {" ".join(sel.split()): body for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", css)}
    numeric = rules["table.docutils td.text-right, table.docutils th.text-right"]
    assert "white-space: nowrap" in numeric
