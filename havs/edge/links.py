"""Link events from the kernel: an rtnetlink socket subscribed to RTNLGRP_LINK.

The kernel sends RTM_NEWLINK when a link's flags change (`ip link set down`, carrier lost) and
RTM_DELLINK when it goes away, within microseconds; polling once per advert saw a link loss up to an
advert interval late. The messages are parsed here without pyroute2 (a fixed 16-byte header, a fixed
16-byte ifinfomsg, then attributes of which only IFLA_IFNAME matters), on the loop's reader callback.

A receive buffer overrun (ENOBUFS: events were lost) is reported as `resync`, so the caller re-reads
every link rather than trusting a partial picture; its slow poll stays as the fallback anyway.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTMGRP_LINK = 1  # the group bit of RTNLGRP_LINK (1)
RTM_NEWLINK, RTM_DELLINK = 16, 17
IFLA_IFNAME = 3
IFF_UP, IFF_RUNNING = 0x1, 0x40
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTA = struct.Struct("=HH")  # length, type


def interface_exists(ifname: str) -> bool:
    """Whether this namespace has an interface of that name now."""
    try:
        socket.if_nametoindex(ifname)
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class LinkEvent:
    ifname: str
    index: int
    up: bool  # administratively up and running (carrier), as `Addresses.link_up` judges it
    deleted: bool = False


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_link_messages(data: bytes) -> list[LinkEvent]:
    """The link events in one netlink datagram; anything else (or anything truncated) is skipped."""
    events: list[LinkEvent] = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            break
        body = offset + _NLMSG.size
        if kind in (RTM_NEWLINK, RTM_DELLINK) and length >= _NLMSG.size + _IFINFO.size:
            _family, _type, index, flags, _change = _IFINFO.unpack_from(data, body)
            name = _ifname(data, body + _IFINFO.size, offset + length)
            if name is not None:
                deleted = kind == RTM_DELLINK
                up = not deleted and bool(flags & IFF_UP and flags & IFF_RUNNING)
                events.append(LinkEvent(name, index, up, deleted))
        offset += _align(length)
    return events


def _ifname(data: bytes, at: int, end: int) -> str | None:
    while at + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, at)
        if length < _RTA.size or at + length > end:
            return None
        if kind == IFLA_IFNAME:
            return data[at + _RTA.size:at + length].split(b"\0", 1)[0].decode("utf-8", "replace")
        at += _align(length)
    return None


class LinkWatcher:
    """Calls `on_event(event)` for each link event, `on_event(None)` when events were lost (resync)."""

    def __init__(self, on_event: Callable[[LinkEvent | None], None]) -> None:
        self._on_event = on_event
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, RTMGRP_LINK))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._sock is not None
        for _ in range(64):  # bounded per wake-up: a storm of link changes cannot hold the loop
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:  # ENOBUFS: the kernel dropped events; anything else: trust none
                self._on_event(None)
                if e.errno == errno.ENOBUFS:
                    continue
                return
            for event in parse_link_messages(data):
                self._on_event(event)

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
