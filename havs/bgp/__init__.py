"""Active-active announcement over BGP: havs starts BIRD 2 as its child and drives it through BIRD's
control socket (docs/scaleout.md). The decisions are in `havs.core.bgp`; this package is the shell."""

from havs.bgp.supervisor import BgpSupervisor

__all__ = ["BgpSupervisor"]
