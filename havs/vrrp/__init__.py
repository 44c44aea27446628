"""VRRP: the child process, its asyncio shell and the parent's handle (`VrrpProcess`)."""

from havs.vrrp_process import VrrpProcess

__all__ = ["VrrpProcess"]
