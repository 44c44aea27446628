"""VRRP: the parent's handle (`VrrpProcess`), the child process, its asyncio shell, the announcer, the
notify runner and the typed protocol between parent and child. The protocol itself is `havs.core.vrrp`."""

from havs.vrrp.process import VrrpProcess

__all__ = ["VrrpProcess"]
