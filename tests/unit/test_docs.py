"""The hook reference must document every hook with its exact signature (datasette's rule)."""

import inspect
from pathlib import Path

from mljob import hookspecs

DOC = Path(__file__).parents[2] / "docs" / "plugins.md"


def hook_names() -> list[str]:
    return [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("mljob_")]


def test_every_hook_is_documented_with_its_signature():
    text = DOC.read_text()
    names = hook_names()
    assert names, "no hooks found in mljob.hookspecs"
    for name in names:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### {name}({params})" in text, f"docs/plugins.md lacks a heading for {name}({params})"


def test_every_documented_hook_exists():
    headings = [line[4:].split("(")[0] for line in DOC.read_text().splitlines() if line.startswith("### mljob_")]
    assert sorted(headings) == sorted(hook_names())
