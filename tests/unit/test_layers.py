"""The layers import only downwards: bpf and schemas (the wire contract) know nothing above them,
runtime knows neither side, and the producer and the consumers never import each other. Tests
import the support package, never another test module; bench imports no test module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# folder -> the pktstream packages its modules may import (besides their own)
ALLOWED = {
    "bpf": set(),
    "schemas": {"pktstream.runtime.native"},  # the loader of the compiled codec, which imports nothing
    "runtime": {"pktstream.schemas"},
    "producer": {"pktstream.schemas", "pktstream.runtime", "pktstream.bpf"},
    "consumers": {"pktstream.schemas", "pktstream.runtime"},
}


def imports(path: Path) -> list[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return out


def allowed(name: str, own: str, extra: set[str]) -> bool:
    if not name.startswith("pktstream.") or name.startswith(f"pktstream.{own}"):
        return True
    return any(name == e or name.startswith(e + ".") for e in extra)


def violations(folder: str) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in imports(path):
            if not allowed(name, folder, ALLOWED[folder]):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_layers_import_only_downwards(folder: str) -> None:
    assert violations(folder) == []


def test_the_scan_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The scan itself: a side importing the other is caught, at any depth."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from pktstream.consumers.engine import runner\n")
    names = imports(f)
    assert "pktstream.consumers.engine" in names
    assert not allowed("pktstream.consumers.engine", "producer", ALLOWED["producer"])
    assert allowed("pktstream.runtime.kafka", "producer", ALLOWED["producer"])


def test_tests_import_support_not_each_other_and_bench_imports_no_test() -> None:
    bad = []
    for path in sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py")):
        for name in imports(path):
            if name.startswith("tests.") and not name.startswith("tests.support"):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
            if path.is_relative_to(ROOT / "tests") and name.startswith("bench"):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert bad == []
