"""The daemon's hold on its VRRP child, and nothing else: ``python -m integration.vrrp_parent CONFIG NODE``.

Starts `havs.vrrp.VrrpProcess` (the real VRRP child: every instance of CONFIG for NODE) and waits; SIGTERM
stops it gracefully, SIGKILL of the process group is a director crash (the child dies with its parent).
The netns tests and benchmarks of several instances run it in a director's namespace: VRRP alone, without
IPVS or the daemon's other work. Prints ``START FAILED: <why>`` and exits 3 if VRRP does not start.
"""

from __future__ import annotations

import signal
import sys
import time


def main(argv: list[str]) -> int:
    from havs.core.config import parse_config, select_node
    from havs.log import setup_logging
    from havs.vrrp import VrrpProcess

    config, node = argv
    with open(config) as f:
        view = select_node(parse_config(f.read(), config), node, "")
    vrrp = VrrpProcess(view, log=setup_logging("json", node=node))
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        vrrp.start()
    except RuntimeError as e:
        print("START FAILED:", e, flush=True)
        return 3
    while not stop:
        time.sleep(0.05)
    vrrp.stop(graceful=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
