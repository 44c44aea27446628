"""Tiers and fixtures for the integration tests.

- ``netns``: host kernel, root, network namespaces (no IPVS).
- ``uml``: inside the user-mode Linux lab only (real IPVS); on the host these are
  skipped: run them with ``python -m integration.lab pytest integration``.

Under CI (``CI`` set) or ``HAVS_REQUIRE_LAB=1``, a tier that cannot run here is a
failure, not a skip: a green CI run must mean the tests ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.lab import in_uml
from integration.topology import SeedLab, ipvs_available

UML_REASON = "uml tier: runs only inside the UML lab; run via python -m integration.lab pytest integration"
_up_times = pytest.StashKey[list[float]]()
_report_key = pytest.StashKey[pytest.TestReport]()
_unavailable = pytest.StashKey[str]()


def _netns_problem() -> str | None:
    """Why network namespaces cannot be used here (None = usable)."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "iproute2 'ip' not installed"
    probe = f"havs{os.getpid()}-probe"
    add = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if add.returncode != 0:
        return f"'ip netns add' failed: {add.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _strict() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("HAVS_REQUIRE_LAB") == "1"


def pytest_report_header(config: pytest.Config) -> str:
    problem = _netns_problem()
    return (
        f"havs lab: in UML={in_uml()} IPVS={ipvs_available()} "
        f"netns={'ok' if problem is None else 'NO (' + problem + ')'}"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_up_times] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    netns_problem: str | None = None
    if any("netns" in it.keywords or "uml" in it.keywords for it in items):
        netns_problem = _netns_problem()
    for item in items:
        if "uml" in item.keywords and not in_uml():
            item.add_marker(pytest.mark.skip(reason=UML_REASON))
        elif ("netns" in item.keywords or "uml" in item.keywords) and netns_problem:
            reason = f"netns tier unavailable: {netns_problem}"
            if _strict():
                item.stash[_unavailable] = reason  # failed in pytest_runtest_setup
            else:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = item.stash.get(_unavailable, None)
    if reason is not None:
        # CI must not pass by skipping the tiers it exists to run.
        pytest.fail(f"{reason} (CI / HAVS_REQUIRE_LAB=1: not skipping)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    rep = yield
    # Kept so the lab fixture can dump logs when the test body failed.
    if rep.when == "call":
        item.stash[_report_key] = rep
    return rep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    times = config.stash.get(_up_times, [])
    if times:
        where = "UML" if in_uml() else "host"
        terminalreporter.write_line(f"havs lab ({where}): seed topology up in " + ", ".join(f"{t:.2f}s" for t in times))


def _dump_logs(lab: SeedLab) -> None:
    # Printed during teardown: pytest shows it under the failed test.
    for log in sorted(Path(lab.workdir).glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        print(f"----- {log.name} (last {min(len(lines), 60)} of {len(lines)} lines)")
        print("\n".join(lines[-60:]))


def _up(request: pytest.FixtureRequest, lab: SeedLab) -> SeedLab:
    lab.up()
    assert lab.up_seconds is not None
    request.config.stash[_up_times].append(lab.up_seconds)
    return lab


@pytest.fixture(scope="session")
def seed_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedLab]:
    """One seed topology for the whole session (prefer the ``lab`` fixture in tests)."""
    lab = SeedLab(workdir=tmp_path_factory.mktemp("seed-lab"))
    try:
        yield _up(request, lab)
    finally:
        lab.down()


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = request.node.stash.get(_report_key, None)
    return rep is not None and rep.failed


@pytest.fixture
def lab(request: pytest.FixtureRequest, seed_lab: SeedLab) -> Iterator[SeedLab]:
    """The session's seed topology, reset to its baseline after the test."""
    try:
        yield seed_lab
    finally:
        if _failed(request):
            _dump_logs(seed_lab)
        seed_lab.reset()


@pytest.fixture
def fresh_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SeedLab]:
    """A brand-new seed topology of its own (distinct namespace names), torn down after the test."""
    lab = SeedLab(workdir=tmp_path / "fresh-lab")  # default prefix: unique among live labs
    try:
        yield _up(request, lab)
    finally:
        if _failed(request):
            _dump_logs(lab)
        lab.down()
