"""README.md leads with the commands that CI and a newcomer run; keep them, the documentation
pages it links and the packaging metadata true."""

from __future__ import annotations

import re
from pathlib import Path

import lightning_memwatch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _fenced_commands(text: str) -> list[str]:
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    (command,) = re.findall(r"^TEST_COMMAND='(.*)'$", ci, flags=re.M)
    assert command in _fenced_commands(README)


def test_readme_leads_with_demo_then_tests():
    commands = _fenced_commands(README)
    demo, tests = commands[0], commands[1]
    (script,) = re.findall(r"python (examples/\S+\.py)", demo)
    assert (ROOT / script).is_file()
    assert "pytest" in tests and "pip install" in demo and "pip install" in tests


def test_readme_fits_a_few_screens():
    assert len(README.splitlines()) < 200


def test_readme_links_exist():
    """Every relative link and image of the README names a file of the repository."""
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert "docs/bibliography.md" in local
    missing = [t for t in local if not (ROOT / t).is_file()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_links_every_docs_page():
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md", "changelog.md"}
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", README))
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def test_docs_yaml_callbacks_instantiate():
    """The LightningCLI snippet of the docs names real classes with arguments they accept."""
    import importlib

    import yaml

    text = (ROOT / "docs" / "use_on_your_model.md").read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    callbacks = yaml.safe_load(block)["trainer"]["callbacks"]
    built = []
    for spec in callbacks:
        module, name = spec["class_path"].rsplit(".", 1)
        built.append(getattr(importlib.import_module(module), name)(**spec["init_args"]))
    names = [type(cb).__name__ for cb in built]
    assert names == ["GeometryMonitor", "RecoveryMonitor", "MemorizationEarlyStopping"]
    assert built[2].monitor in built[1].logged_keys


def test_version_comes_from_one_place():
    """pyproject.toml reads the version from ``lightning_memwatch.__version__`` and the
    changelog has an entry for it."""
    pyproject = (ROOT / "pyproject.toml").read_text()  # no tomllib before Python 3.11
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, flags=re.M)
    assert re.search(r'^dynamic = \["version"\]$', project, flags=re.M)
    dynamic = pyproject.split("[tool.setuptools.dynamic]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^version = \{ attr = "lightning_memwatch.__version__" \}$', dynamic, re.M)
    version = lightning_memwatch.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", version)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{version}]" in changelog


def test_readme_snippet_builds_its_callbacks():
    """The README's snippet for one's own model runs up to ``trainer.fit`` (which needs a model)."""
    (block,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    lines = block.splitlines()
    (fit,) = [i for i, line in enumerate(lines) if line.startswith("trainer.fit(")]
    namespace: dict = {}
    exec(compile("\n".join(lines[:fit]), "README.md", "exec"), namespace)
    names = [type(cb).__name__ for cb in namespace["trainer"].callbacks]
    assert {"GeometryMonitor", "RecoveryMonitor", "MemorizationEarlyStopping"} <= set(names)


def _error_messages(folder: Path) -> list[tuple[str, str]]:
    """(where, opening words) of every ``ValueError`` / ``OutputError`` built in ``folder``: up
    to four words of the message's first literal part of three words or more (else two)."""
    import ast

    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(getattr(node, "func", None), "id", None)
            if not (isinstance(node, ast.Call) and name in ("ValueError", "OutputError")):
                continue
            if not node.args:
                continue
            arg = node.args[0]
            parts = arg.values if isinstance(arg, ast.JoinedStr) else [arg]
            literals = [p.value for p in parts if isinstance(p, ast.Constant)]
            split = [re.sub(r"[`*]", "", s).split() for s in literals if isinstance(s, str)]
            split = [[w for w in s if re.search("[A-Za-z]", w)] for s in split]
            words = next((w for w in split if len(w) >= 3), None)
            words = words or next((w for w in split if len(w) >= 2), [])
            if not any(split):
                continue  # a wrapper that re-raises another error's message under a prefix
            found.append((f"{path.name}:{node.lineno}", " ".join(words[:4])))
    return found


def test_troubleshooting_lists_every_setup_error():
    """Every error message the callbacks raise is on the troubleshooting page (by its opening
    words), so a new check cannot go undocumented."""
    page = " ".join(re.sub(r"[`*]", "", (ROOT / "docs" / "troubleshooting.md").read_text()).split())
    # raised inside a dry run and re-raised as "could not compute log p(x)", which the page lists
    internal = {"the decoder returned"}
    messages = _error_messages(ROOT / "lightning_memwatch" / "callbacks")
    assert len(messages) > 40
    missing = [
        (where, words) for where, words in messages if words not in internal and words not in page
    ]
    assert not missing, f"errors not on docs/troubleshooting.md: {missing}"


def test_no_reference_outside_the_repository():
    """Papers are cited by short name and equation (docs/bibliography.md), never by a path or a
    design-note section that exists only outside the repository."""
    import subprocess

    files = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.yaml", "*.toml", "*.txt", "*.cfg"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(files) > 50
    pattern = re.compile("|".join(["pap" + "ers/", "DES" + "IGN", "\u00a7"]))
    found = [
        f"{name}:{number}"
        for name in files
        if (ROOT / name).is_file()
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, f"references outside the repository: {found}"
