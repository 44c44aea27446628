"""The daemon's hold on its VRRP child, and nothing else: ``python -m integration.vrrp_parent CONFIG NODE``.

Starts `havs.vrrp.VrrpProcess` (the real VRRP child: every instance of CONFIG for NODE) and waits; SIGHUP
re-reads CONFIG and hands it over (`update`, printing ``UPDATED True|False``), SIGTERM stops it gracefully,
SIGKILL of the process group is a director crash (the child dies with its parent).
The netns tests and benchmarks of several instances run it in a director's namespace: VRRP alone, without
IPVS or the daemon's other work. Prints ``START FAILED: <why>`` and exits 3 if VRRP does not start.
"""

from __future__ import annotations

import signal
import sys
import time


def main(argv: list[str]) -> int:
    from havs.core.config import parse_config, select_node
    from havs.core.model import NodeView
    from havs.log import setup_logging
    from havs.vrrp import VrrpProcess

    config, node = argv

    def read() -> NodeView:
        with open(config) as f:
            return select_node(parse_config(f.read(), config), node, "")

    vrrp = VrrpProcess(read(), log=setup_logging("json", node=node))
    stop: list[int] = []
    reload: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGHUP, lambda *_: reload.append(1))
    try:
        vrrp.start()
    except RuntimeError as e:
        print("START FAILED:", e, flush=True)
        return 3
    while not stop:
        if reload:
            reload.clear()
            print("UPDATED", vrrp.update(read()), flush=True)
        time.sleep(0.05)
    vrrp.stop(graceful=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
