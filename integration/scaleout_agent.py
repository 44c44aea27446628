"""havs's BGP shell without the rest of havs, for the netns tier (the host kernel has no IPVS):

    python -m integration.scaleout_agent CONFIG NODE

Feeds `havs.bgp.BgpSupervisor` as the daemon does (the first feed starts BIRD), every 0.2 s, the table `havs apply`
would build with every real server up, taken as present in the kernel. SIGUSR1 toggles "no healthy real
server" (the withdrawal path); SIGTERM is the graceful drain then exit, as in the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from havs.bgp import BgpSupervisor
from havs.configfile import load_view
from havs.core.desired import build_desired
from havs.core.ipvs_table import IpvsTable
from havs.log import setup_logging


async def main(config: str, node: str) -> int:
    view = load_view(config, node)
    log = setup_logging("json", node=node)
    desired = build_desired(view.config)
    bgp = BgpSupervisor(log)
    stop, healthy = asyncio.Event(), [True]
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: healthy.__setitem__(0, not healthy[0]))
    while not stop.is_set():
        bgp.feed(view, desired, desired.table if healthy[0] else IpvsTable([]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    await bgp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
