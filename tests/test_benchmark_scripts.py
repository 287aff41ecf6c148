"""The benchmark scripts' --help: each describes itself with its docstring's whole first paragraph."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if "ArgumentParser(" in p.read_text())


def first_paragraph(script: Path) -> str:
    docstring = ast.get_docstring(ast.parse(script.read_text())) or ""
    return docstring.split("\n\n")[0]


def test_there_are_scripts_to_check():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_shows_a_whole_first_paragraph(script):
    source = script.read_text()
    # The first line alone cut --help off mid-sentence ("..., and").
    assert "__doc__.splitlines()[0]" not in source
    if "description=__doc__" in source:
        assert first_paragraph(script).rstrip().endswith((".", ":", ")")), first_paragraph(script)[-80:]
