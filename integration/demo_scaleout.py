"""The scale-out demo (about 50 s on this machine, UML boot included): `python -m integration.demo_scaleout`.

Boots the UML lab, builds a BIRD router with ECMP in front of three directors that run havs (IPVS mh + DR
and TUN, announced over BGP + BFD by the BIRD havs starts), shows the router's sessions and ECMP route and a
director's IPVS table, then tells the story with clients running: the spread, a 4th director joining, a
director dying whole (BFD), a graceful stop, a kill -9 of havs; it ends with the benchmark's RESULT line.
"""

from __future__ import annotations

import sys

from integration.bench_scaleout import main

if __name__ == "__main__":
    sys.exit(main(["--demo", *sys.argv[1:]]))
