"""Netlink and generic-netlink framing, for any family: headers, attributes, replies. Pure (bytes in, bytes
out); `havs.core.ipvs_codec` builds the IPVS messages on it. Layouts: include/uapi/linux/netlink.h and
genetlink.h; every field in the host's byte order unless said otherwise (docs/ipvs.md).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF


_HDR = struct.Struct("=IHHII")  # nlmsghdr: len type flags seq pid
_GENL = struct.Struct("=BBH")  # genlmsghdr: cmd version reserved
_NLA = struct.Struct("=HH")  # nlattr: len type
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_U64 = struct.Struct("=Q")
_BE16 = struct.Struct("!H")
_FLAGS = struct.Struct("=II")


def nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _NLA.pack(n, kind) + payload + b"\0" * (-n & 3)


def nla_nest(kind: int, *attrs: bytes) -> bytes:
    return nla(kind | NLA_F_NESTED, b"".join(attrs))


def nla_u8(kind: int, v: int) -> bytes:
    return nla(kind, bytes((v,)))


def nla_u16(kind: int, v: int) -> bytes:
    return nla(kind, _U16.pack(v))


def nla_be16(kind: int, v: int) -> bytes:
    return nla(kind, _BE16.pack(v))


def nla_u32(kind: int, v: int) -> bytes:
    return nla(kind, _U32.pack(v))


def nla_str(kind: int, v: str) -> bytes:
    return nla(kind, v.encode() + b"\0")


def genl_message(family: int, cmd: int, flags: int, seq: int, attrs: bytes = b"", version: int = 1) -> bytes:
    return _HDR.pack(20 + len(attrs), family, flags, seq, 0) + _GENL.pack(cmd, version, 0) + attrs


def parse_attrs(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """nlattrs → {type: payload}; nested ones are parsed again by the caller."""
    out: dict[int, bytes] = {}
    if isinstance(buf, memoryview):
        buf = bytes(buf[start:end]) if (start or end is not None) else bytes(buf)
        start, end = 0, None
    end = len(buf) if end is None else end
    pos = start
    unpack = _NLA.unpack_from
    while pos + 4 <= end:
        n, kind = unpack(buf, pos)
        if n < 4:
            break
        out[kind & NLA_TYPE_MASK] = buf[pos + 4:pos + n]
        pos += (n + 3) & ~3
    return out


def iter_messages(buf: bytes | memoryview) -> Iterator[tuple[int, int, int, memoryview]]:
    """Netlink messages in a datagram: (type, flags, seq, payload after nlmsghdr)."""
    view = memoryview(buf)
    pos = 0
    while pos + 16 <= len(view):
        n, kind, flags, seq, _pid = _HDR.unpack_from(view, pos)
        if n < 16:
            break
        yield kind, flags, seq, view[pos + 16:pos + n]
        pos += (n + 3) & ~3


def genl_attrs(payload: memoryview | bytes) -> dict[int, bytes]:
    """Top-level attributes of a generic-netlink message payload (skips genlmsghdr)."""
    return parse_attrs(payload, 4)


def getfamily_request(name: str, seq: int = 1) -> bytes:
    """nlctrl GETFAMILY: the kernel's number for the generic-netlink family `name` (loads ip_vs on demand)."""
    return genl_message(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, NLM_F_REQUEST | NLM_F_ACK, seq,
                        nla_str(CTRL_ATTR_FAMILY_NAME, name))


def family_id(payload: memoryview | bytes) -> int | None:
    """The family number in a GETFAMILY reply's payload (None if absent)."""
    raw = genl_attrs(payload).get(CTRL_ATTR_FAMILY_ID)
    return _U16.unpack(raw[:2])[0] if raw is not None else None


def error_code(payload: memoryview | bytes) -> int:
    """An NLMSG_ERROR's errno as a positive number; 0 is an ack."""
    return -_I32.unpack_from(payload)[0]


def first_nest(payload: memoryview | bytes, attr: int) -> bytes | None:
    """The payload of top-level attribute `attr` of a generic-netlink reply. IPVS replies hold one nested
    attribute right after the genlmsghdr, so that one is read without parsing the rest."""
    n, kind = _NLA.unpack_from(payload, 4)
    if kind & NLA_TYPE_MASK == attr:
        return bytes(payload[8:4 + n])
    return genl_attrs(payload).get(attr)
