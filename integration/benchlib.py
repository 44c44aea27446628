"""What the benchmarks share: the lab-failure error, a non-raising poll, the open-files limit, config edits
of etc/havs.yaml, keepalived's real-server blocks, CPU figures, and the cells of their tables."""

from __future__ import annotations

import os
import re
import resource
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from integration.waits import poll

__all__ = ["SEED_CONFIG", "LabBroken", "cell", "edit_seed_config", "keepalived_real_servers",
           "percentile", "poll", "proc_cpu", "raise_fd_limit", "ratio", "system_cpu"]

SEED_CONFIG = Path(__file__).resolve().parent.parent / "etc" / "havs.yaml"


class LabBroken(RuntimeError):
    """The lab itself failed (not a slow or failing daemon)."""


def raise_fd_limit(want: int = 65536) -> int:
    """Raise this process's open-files limit (inherited by what it starts) to ``want``, or at least the soft
    limit to the hard one: thousands of kept-alive probe connections need more than the default 1024 (UML's
    PID 1 starts with 1024/4096). Returns the soft limit now in force."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        target = max(want, hard)  # never lowers the hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))  # above the hard limit needs root
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, all threads; NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine (in UML: its one CPU)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def edit_seed_config(subs: Mapping[str, str], text: str | None = None) -> str:
    """etc/havs.yaml (or ``text``) with each regex replaced exactly once; LabBroken names one that matched
    nothing, so a changed seed config fails loudly instead of benchmarking the wrong thing."""
    text = SEED_CONFIG.read_text() if text is None else text
    for pattern, repl in subs.items():
        text, n = re.subn(pattern, repl, text, count=1)
        if n != 1:
            raise LabBroken(f"etc/havs.yaml: no line matches {pattern!r}")
    return text


def keepalived_real_servers(addresses: Sequence[str], *, retry: int, delay_before_retry: int | None = None) -> str:
    """keepalived's `real_server` blocks with an HTTP_GET check of / (status 200, connect_timeout 1)."""
    delay = f"            delay_before_retry {delay_before_retry}\n" if delay_before_retry is not None else ""
    return "".join(
        f"""    real_server {ip} 80 {{
        weight 1
        HTTP_GET {{
            url {{
                path /
                status_code 200
            }}
            connect_timeout 1
            retry {retry}
{delay}        }}
    }}
"""
        for ip in addresses
    )


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "-"
    if b == 0:
        return "1.00" if a == 0 else "inf"
    return f"{a / b:.2f}"


def cell(values: Sequence[float], fmt: str) -> str:
    """median [min-max]"""
    if not values:
        return "-"
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"
