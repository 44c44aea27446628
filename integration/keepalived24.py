"""keepalived 2.4.3 (vendor/keepalived-2.4.3.tar.gz) as the `auth_hmac` interop peer: where its build is,
its config, and starting it in a namespace of the seed lab.

`scripts/build-keepalived` (run by `scripts/setup`) builds it once per machine into
`$HAVS_CACHE/keepalived-<sha256 of the tarball>/` (default /var/cache/havs). Tests call `require()`: without
the build they skip with the reason, except under CI=true, where a missing build is a failure.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TARBALL = REPO / "vendor" / "keepalived-2.4.3.tar.gz"


def binary() -> Path:
    """Where scripts/build-keepalived puts the binary for this tarball (it may not be there)."""
    sha = hashlib.sha256(TARBALL.read_bytes()).hexdigest()
    root = Path(os.environ.get("HAVS_CACHE", "/var/cache/havs"))
    return root / f"keepalived-{sha}" / "sbin" / "keepalived"


def require() -> Path:
    path = binary()
    if path.is_file() and os.access(path, os.X_OK):
        return path
    why = f"keepalived 2.4.3 is not built ({path} missing): run bash scripts/setup (or scripts/build-keepalived)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def auth_block(keys: dict[int, str], active: int, mode: str = "enforce", anti_replay: str = "time",
               window: int | None = 5) -> str:
    """keepalived's `auth_hmac { … }` for havs's settings (mode receive_only is spelled receive-only)."""
    lines = [f"        key {k} {v}" for k, v in sorted(keys.items())]
    lines += [f"        active_key {active}", f"        anti_replay {anti_replay}",
              f"        mode {mode.replace('_', '-')}"]
    if window is not None:
        lines.append(f"        time_window {window}")
    return "    auth_hmac {\n" + "\n".join(lines) + "\n    }\n"


def conf(*, interval: float, priority: int, vip: str, gateway: str, auth: str = "", state: str = "BACKUP",
         preempt: bool = True) -> str:
    return f"""global_defs {{
    router_id havs_interop24
}}
vrrp_instance VI_1 {{
    state {state}
    interface eth1
    virtual_router_id 51
    version 3
    priority {priority}
    advert_int {interval:g}
{"" if preempt else "    nopreempt" + chr(10)}{auth}    virtual_ipaddress {{
        {vip} dev eth0
        {gateway} dev eth1
    }}
}}
"""


class Keepalived:
    """One keepalived 2.4.3 in a lab namespace; `reload(text)` rewrites its config and sends SIGHUP."""

    def __init__(self, lab: Any, node: str, text: str) -> None:
        self.lab, self.node = lab, node
        tag = f"{node}-{time.time_ns()}"
        self.conf = lab.workdir / f"keepalived24-{tag}.conf"
        self.conf.write_text(text)
        self.log = lab.workdir / f"keepalived24-{tag}.log"
        argv = [str(require()), "-n", "-l", "-D", "-G", "-P", "-f", str(self.conf),
                "-p", str(lab.workdir / f"ka24-{tag}.pid"), "-r", str(lab.workdir / f"ka24-vrrp-{tag}.pid")]
        self.proc: subprocess.Popen[bytes] = lab.popen(node, argv, self.log)

    def reload(self, text: str) -> None:
        self.conf.write_text(text)
        os.kill(self.proc.pid, 1)  # SIGHUP

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
