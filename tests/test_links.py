"""rtnetlink link messages, parsed without pyroute2 (the edge the VRRP child reacts to link loss with)."""

from __future__ import annotations

import struct

from havs.edge.links import IFF_RUNNING, IFF_UP, RTM_DELLINK, RTM_NEWLINK, LinkEvent, parse_link_messages


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, index: int, flags: int, name: str | None, extra: bytes = b"") -> bytes:
    body = struct.pack("=BxHiII", 0, 1, index, flags, 0xFFFFFFFF) + extra
    if name is not None:
        body += attr(3, name.encode() + b"\0")
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_new_and_deleted_links_with_their_state() -> None:
    data = (message(RTM_NEWLINK, 2, IFF_UP | IFF_RUNNING, "eth0", extra=attr(4, struct.pack("=I", 1500)))
            + message(RTM_NEWLINK, 3, IFF_UP, "eth1")  # up, no carrier
            + message(RTM_NEWLINK, 4, 0, "eth2")  # ip link set down
            + message(RTM_DELLINK, 5, IFF_UP | IFF_RUNNING, "veth9"))
    assert parse_link_messages(data) == [LinkEvent("eth0", 2, True), LinkEvent("eth1", 3, False),
                                         LinkEvent("eth2", 4, False), LinkEvent("veth9", 5, False, deleted=True)]


def test_other_and_broken_messages_are_skipped() -> None:
    good = message(RTM_NEWLINK, 2, IFF_UP | IFF_RUNNING, "eth0")
    address = struct.pack("=IHHII", 24, 20, 0, 0, 0) + b"\0" * 8  # RTM_NEWADDR
    assert parse_link_messages(address + good) == [LinkEvent("eth0", 2, True)]
    assert parse_link_messages(message(RTM_NEWLINK, 2, IFF_UP, None)) == []  # no name
    assert parse_link_messages(good[:-3]) == []  # truncated
    assert parse_link_messages(struct.pack("=IHHII", 8, 16, 0, 0, 0) + good) == []  # length below the header
    bad_attr = good[:32] + struct.pack("=HH", 200, 3) + good[36:]  # attribute longer than its message
    assert parse_link_messages(bad_attr) == []
