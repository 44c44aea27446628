"""The architecture holds (docs/architecture.md): pure cores do no I/O, shells do not lean on each other
sideways, edges stay independent of each other and of everything above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "havs"
FORBIDDEN_IN_CORE = {"asyncio", "socket", "time", "random", "pyroute2", "aiohttp", "structlog", "havs.edge",
                     "havs.daemon", "subprocess", "threading", "os", "select", "ssl", "pathlib", "shutil",
                     "io", "fcntl", "signal", "logging", "datetime", "havs.vrrp", "havs.reconcile",
                     "havs.health_service", "havs.cli", "havs.log", "havs.configfile", "havs.metrics",
                     "havs.bgp", "havs.vrrp_supervisor", "havs.control_shell", "havs.reload_reader",
                     "havs.startup", "havs.drains", "havs.failback"}
# builtins that read, write or run things: a core takes text and returns values
FORBIDDEN_CALLS_IN_CORE = {"open", "print", "input", "exec", "eval", "breakpoint", "__import__"}
# The shells: each one drives its own cores and edges; only the composition roots wire them together.
SHELLS = {"havs.vrrp", "havs.vrrp_supervisor", "havs.health_service", "havs.reconcile", "havs.control_shell",
          "havs.reload_reader", "havs.bgp", "havs.metrics", "havs.failback"}
# modules that are one shell together: the failback catch-up runs inside the VRRP supervisor
TOGETHER = [{"havs.vrrp_supervisor", "havs.failback"}]
ROOTS = {"havs.daemon", "havs.cli", "havs.__main__"}


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = package or ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.add(node.module)
            elif node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                found.add(".".join([*base, node.module] if node.module else base))
    return found


def called_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def violations(path: Path, forbidden: set[str], package: str | None = None) -> list[str]:
    return sorted(m for m in imported_modules(path, package) if any(m == f or m.startswith(f + ".") for f in forbidden))


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def shell_of(path: Path) -> str | None:
    name = module_name(path)
    return next((s for s in SHELLS if name == s or name.startswith(s + ".")), None)


ALL = sorted(PKG.rglob("*.py"))
CORE = sorted((PKG / "core").glob("*.py"))
EDGE = sorted((PKG / "edge").glob("*.py"))


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_is_pure(path: Path) -> None:
    assert violations(path, FORBIDDEN_IN_CORE) == []
    assert sorted(called_names(path) & FORBIDDEN_CALLS_IN_CORE) == []


@pytest.mark.parametrize("path", EDGE, ids=lambda p: p.name)
def test_edges_do_not_import_each_other_or_upward(path: Path) -> None:
    # shared helpers, not facilities: havs.edge.netns (entering a namespace on a thread) and
    # havs.edge.http_response (the one HTTP response reader of both probe edges, probe.py and checker.py)
    others = {f"havs.edge.{p.stem}" for p in EDGE if p != path and p.stem not in ("__init__", "netns", "http_response")}
    assert violations(path, others | SHELLS | ROOTS) == []


@pytest.mark.parametrize("path", [p for p in ALL if shell_of(p)], ids=lambda p: module_name(p))
def test_shells_do_not_import_each_other(path: Path) -> None:
    own = shell_of(path)
    group = next((g for g in TOGETHER if own in g), {own})
    assert violations(path, (SHELLS - group) | ROOTS) == []


def test_the_checks_catch_violations(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom asyncio import sleep\nimport os.path\nfrom ..edge import ipvs\n"
                   "print(open('x').read())\n")
    # read as if it were a module of havs.core, so the relative import resolves as it would there
    assert violations(bad, FORBIDDEN_IN_CORE, "havs.core") == ["asyncio", "havs.edge", "os.path", "time"]
    assert sorted(called_names(bad) & FORBIDDEN_CALLS_IN_CORE) == ["open", "print"]
    assert shell_of(PKG / "vrrp" / "shell.py") == "havs.vrrp"
    assert shell_of(PKG / "daemon.py") is None
