"""The architecture holds: pure cores never import I/O, time or logging; edges never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "havs"
FORBIDDEN_IN_CORE = {"asyncio", "socket", "time", "random", "pyroute2", "aiohttp", "structlog", "havs.edge",
                     "havs.daemon", "subprocess", "threading", "os", "select", "ssl"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def violations(path: Path, forbidden: set[str]) -> list[str]:
    return sorted(m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("path", sorted((PKG / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_is_pure(path: Path) -> None:
    assert violations(path, FORBIDDEN_IN_CORE) == []


@pytest.mark.parametrize("path", sorted((PKG / "edge").glob("*.py")), ids=lambda p: p.name)
def test_edges_do_not_import_each_other(path: Path) -> None:
    others = {f"havs.edge.{p.stem}" for p in (PKG / "edge").glob("*.py") if p != path and p.stem != "__init__"}
    assert violations(path, others | {"havs.daemon", "havs.cli"}) == []


def test_the_check_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom asyncio import sleep\nimport os.path\n")
    assert violations(bad, FORBIDDEN_IN_CORE) == ["asyncio", "os.path", "time"]
