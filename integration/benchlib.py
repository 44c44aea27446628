"""What the lab benchmarks share: the lab-failure error, a non-raising poll, config edits of etc/havs.yaml,
keepalived's real-server blocks, and the cells of their tables."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

SEED_CONFIG = Path(__file__).resolve().parent.parent / "etc" / "havs.yaml"


class LabBroken(RuntimeError):
    """The lab itself failed (not a slow or failing daemon)."""


def poll(pred: Callable[[], bool], timeout: float, step: float) -> float | None:
    """Seconds until ``pred`` held, or None after ``timeout``: a benchmark records a miss, never raises."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(step)
    return time.monotonic() - t0


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
