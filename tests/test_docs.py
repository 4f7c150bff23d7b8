"""The README and docs/ stay true: every Python block runs as shown (files named in a block's first
line are written there first, as a reader would save them), every TOML block parses, and
docs/config.md is the current key reference generated from the code."""

import re
import sys
import tomllib
from pathlib import Path

import pytest

from helpers import write_fashion_like

ROOT = Path(__file__).parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SAVED_AS = re.compile(r"# ([\w./]+\.py)$")  # a block whose first line names its file


def _blocks(document, language):
    return re.findall(rf"```{language}\n(.*?)```", document.read_text(), re.S)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_python_block_runs_as_shown(document, tmp_path, monkeypatch):
    blocks = _blocks(document, "python")
    if not blocks:
        pytest.skip(f"{document.name} has no Python block")
    monkeypatch.setenv("NUMDL_DATA", str(write_fashion_like(tmp_path / "data", n_train=600, n_test=200)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    modules_before = set(sys.modules)
    namespace = {"__name__": f"docs_{document.stem}"}
    try:
        for number, block in enumerate(blocks, 1):
            saved = SAVED_AS.match(block.splitlines()[0])
            if saved:
                path = tmp_path / saved.group(1)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(block)
                continue
            exec(compile(block, f"{document.name}, Python block {number}", "exec"), namespace)
        for name, function in list(namespace.items()):
            if name.startswith("test_") and callable(function):
                function()  # the guide's own tests
    finally:
        for name in set(sys.modules) - modules_before:
            if name.startswith("my_numdl_plugin"):
                del sys.modules[name]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_toml_block_parses(document):
    for block in _blocks(document, "toml"):
        tomllib.loads(block)


def test_the_config_key_reference_is_current_and_complete():
    from numdl.config import DESCRIPTIONS, ITEM_SECTIONS, SECTIONS, TOP_LEVEL, key_reference

    keys = set(TOP_LEVEL) | {f"{s}.{k}" for s, table in SECTIONS.items() for k in table} | set(ITEM_SECTIONS)
    assert keys == set(DESCRIPTIONS), "every config key needs a DESCRIPTIONS entry (and nothing else)"
    assert (ROOT / "docs" / "config.md").read_text() == key_reference(), \
        "docs/config.md is stale: python -m numdl.config > docs/config.md"
