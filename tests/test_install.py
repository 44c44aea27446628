"""scripts/install on a clean tree, into a temporary root: the venv's havs runs, the unit points at it and
passes systemd-analyze verify, an existing config is kept, ip_forward and the man pages are in place.

It builds a real venv and pip-installs havs with its dependencies (from the index pip is configured with:
~25 s); the pages are generated from README.md and docs/config.md, so they are never older than the docs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from havs import __version__

REPO = Path(__file__).resolve().parents[1]


def clean_tree(dest: Path) -> Path:
    """The repository as a fresh clone has it: tracked files only (no .venv, no build output)."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("install")
    tree = clean_tree(base / "clone")
    root = base / "root"
    # an operator's config is already there: the example must not replace it
    (root / "etc/havs").mkdir(parents=True)
    (root / "etc/havs").chmod(0o700)
    (root / "etc/havs/havs.yaml").write_text("# mine\n" + (REPO / "etc/havs.yaml").read_text())
    done = subprocess.run(["bash", str(tree / "scripts/install"), "--root", str(root)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HAVS_PYTHON": sys.base_prefix + "/bin/python3"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kept the existing /etc/havs/havs.yaml" in done.stdout
    yield root


def test_the_venv_havs_runs(installed: Path) -> None:
    havs = installed / "opt/havs/bin/havs"
    version = subprocess.run([str(havs), "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"havs {__version__}"
    check = subprocess.run([str(havs), "check", "--offline", "-c", str(installed / "etc/havs/havs.yaml"),
                            "--node", "lvs1"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "OK — node lvs1" in check.stdout, check.stderr
    # uvloop (the fast extra) and a tested aiohttp are in the venv
    probe = subprocess.run([str(installed / "opt/havs/bin/python"), "-c",
                            "import uvloop, aiohttp; from havs.edge.probe import C_PARSER; print(aiohttp.__version__)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("3.14."), probe.stdout  # the pinned, tested range
    assert os.readlink(installed / "usr/local/sbin/havs") == "/opt/havs/bin/havs"


def test_existing_config_kept_and_private(installed: Path) -> None:
    config = installed / "etc/havs/havs.yaml"
    assert config.read_text().startswith("# mine\n")
    assert (installed / "etc/havs").stat().st_mode & 0o777 == 0o700


def test_example_config_installed_when_absent_and_ip_forward_persisted(tmp_path: Path) -> None:
    # a fresh root (the venv stubbed: the real one is built once, above): the example config arrives 0600 in
    # a 0700 directory, with the sysctl drop-in, the pages and the docs
    root = tmp_path / "root"
    (root / "opt/havs/bin").mkdir(parents=True)
    fake = root / "opt/havs/bin/python"
    fake.write_text("#!/bin/sh\nexit 0\n")  # `import sys` works; pip install is a no-op
    fake.chmod(0o755)
    havs = root / "opt/havs/bin/havs"
    havs.write_text("#!/bin/sh\necho havs test\n")
    havs.chmod(0o755)
    done = subprocess.run(["bash", str(REPO / "scripts/install"), "--root", str(root)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "installed the example /etc/havs/havs.yaml" in done.stdout
    config = root / "etc/havs/havs.yaml"
    assert config.read_text() == (REPO / "etc/havs.yaml").read_text()
    assert config.stat().st_mode & 0o777 == 0o600 and (root / "etc/havs").stat().st_mode & 0o777 == 0o700
    sysctl = (root / "etc/sysctl.d/60-havs.conf").read_text()
    assert re.search(r"(?m)^net\.ipv4\.ip_forward = 1$", sysctl)
    assert (root / "usr/local/share/man/man8/havs.8").is_file()
    assert (root / "usr/local/share/doc/havs/docs/config.md").is_file()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
                    reason="systemd-analyze is not installed")
def test_installed_unit_verifies_and_points_at_the_venv(installed: Path, tmp_path: Path) -> None:
    text = (installed / "etc/systemd/system/havs.service").read_text()
    assert "ExecStart=/opt/havs/bin/havs run -c ${HAVS_CONFIG} --log-format json" in text
    unit = tmp_path / "havs.service"
    unit.write_text(text.replace("/opt/havs/", f"{installed}/opt/havs/"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MANPATH": str(installed / "usr/local/share/man")})
    assert done.returncode == 0 and "havs.service" not in done.stderr, done.stderr


def test_man_pages_come_from_the_docs(installed: Path) -> None:
    page8 = (installed / "usr/local/share/man/man8/havs.8").read_text()
    page5 = (installed / "usr/local/share/man/man5/havs.yaml.5").read_text()
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"(?m)^\| `(havs [a-z]+)", readme.split("## Commands", 1)[1])
    assert len(commands) >= 8
    for command in commands:
        assert f"\\fB{command}" in page8.replace("\\-", "-"), command
    keys = re.findall(r"(?m)^\| `([a-z_]+)`", (REPO / "docs/config.md").read_text())
    assert len(keys) >= 40
    for key in keys:
        assert f"\\fB{key}\\fR" in page5, key
    if shutil.which("groff"):
        for page in (page8, page5):
            done = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=page, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0 and done.stderr == "", done.stderr
