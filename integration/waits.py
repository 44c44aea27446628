"""The one bounded wait of the lab, its tests and its benchmarks.

`poll` returns None on timeout (a benchmark records a miss); `wait_until` raises TimeoutError naming what
did not happen (a test fails with a reason). Both poll `pred` every `step` seconds, never past `timeout`.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def poll(pred: Callable[[], bool], timeout: float, step: float) -> float | None:
    """Seconds until ``pred`` held, or None after ``timeout``."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(step)
    return time.monotonic() - t0


def wait_until(what: str, pred: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Seconds until ``pred`` held; past ``timeout``, TimeoutError names ``what`` did not happen."""
    took = poll(pred, timeout, step)
    if took is None:
        raise TimeoutError(f"{what}: not within {timeout}s")
    return took
