"""Connection entries: read from the kernel's text table, written as the kernel's sync messages (v1), and
carried between two havs daemons for a catch-up (docs/connection-sync.md). Pure: bytes and text in, values
out; `ValueError` names what is wrong.

Three formats:
- `/proc/net/ip_vs_conn` lines (what the master has) → `Conn`;
- `Conn` → IPVS sync protocol v1 datagrams, which the kernel's backup sync thread on the returning director
  turns into connection entries (there is no netlink call to install one);
- the catch-up channel: a request ("replay your table") and the master's answer, the list of the
  (protocol, client, virtual, real server) tuples it replayed, in parts that fit a datagram.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
# the kernel's TCP state numbers, by the names /proc/net/ip_vs_conn prints
TCP_STATES = {"NONE": 0, "ESTABLISHED": 1, "SYN_SENT": 2, "SYN_RECV": 3, "FIN_WAIT": 4, "TIME_WAIT": 5,
              "CLOSE": 6, "CLOSE_WAIT": 7, "LAST_ACK": 8, "LISTEN": 9, "SYNACK": 10}
# the states the kernel's own master thread syncs for TCP (a half-open connection is not worth a replay)
TCP_SYNCED = frozenset({"ESTABLISHED", "FIN_WAIT", "TIME_WAIT", "CLOSE", "CLOSE_WAIT"})
CONN_F_INACTIVE = 0x0100  # the entry counts as inactive on the receiver (anything but ESTABLISHED)

SYNC_GROUP = ipaddress.IPv4Address("224.0.0.81")
SYNC_PORT = 8848
SYNC_MAXLEN = 1472  # the kernel's default sync_maxlen: one Ethernet frame
_HEADER = struct.Struct("!BBHBbH")  # reserved 0, syncid, size, nr_conns, version 1, spare 0
_ENTRY = struct.Struct("!BBHIHHHHII")  # type, protocol, ver|size, flags, state, cport, vport, dport, fwmark, timeout


@dataclass(frozen=True, order=True)
class Conn:
    protocol: int  # 6 TCP, 17 UDP
    client: IPAddress
    cport: int
    vip: IPAddress
    vport: int
    server: IPAddress
    dport: int
    state: str = "ESTABLISHED"
    expires: int = 0  # seconds left on the sender

    @property
    def key(self) -> Key:
        return Key(self.protocol, self.client, self.cport, self.vip, self.vport, self.server, self.dport)


@dataclass(frozen=True, order=True)
class Key:
    """What "the same connection" means on both directors: state and timers may differ."""

    protocol: int
    client: IPAddress
    cport: int
    vip: IPAddress
    vport: int
    server: IPAddress
    dport: int


# ------------------------------------------------------------------------------ /proc/net/ip_vs_conn


def _addr(text: str) -> IPAddress:
    # IPv4 is printed as 8 hex digits, IPv6 as text
    return ipaddress.IPv4Address(int(text, 16)) if len(text) == 8 and ":" not in text else ipaddress.ip_address(text)


def parse_proc_conn(text: str) -> list[Conn]:
    """The entries of `/proc/net/ip_vs_conn`. Persistence templates (state NONE, port 0) and protocols the
    catch-up does not carry are left out; a malformed line is a ValueError naming its number."""
    conns: list[Conn] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "Pro":
            continue
        try:
            proto, caddr, cport, vaddr, vport, daddr, dport, state, expires = fields[:9]
            protocol = PROTOCOLS.get(proto)
            if protocol not in (6, 17) or state == "NONE":
                continue
            conns.append(Conn(protocol, _addr(caddr), int(cport, 16), _addr(vaddr), int(vport, 16), _addr(daddr),
                              int(dport, 16), state, int(expires)))
        except ValueError as e:
            raise ValueError(f"ip_vs_conn line {number}: {e}: {line.strip()!r}") from None
    return conns


def replayable(conns: Iterable[Conn]) -> list[Conn]:
    """The entries worth sending: TCP in the states the kernel syncs, UDP; IPv4 (the sync group is IPv4)."""
    return [c for c in conns if c.client.version == 4 and (c.protocol == 17 or c.state in TCP_SYNCED)]


# ------------------------------------------------------------------------------ sync protocol v1


def _state_number(conn: Conn) -> int:
    return TCP_STATES[conn.state] if conn.protocol == 6 else 0  # UDP has one state


def encode_sync(conns: Iterable[Conn], syncid: int = 0, maxlen: int = SYNC_MAXLEN) -> list[bytes]:
    """IPv4 entries as v1 sync messages of at most `maxlen` bytes (255 entries at most each). Timeout 0:
    the receiver gives each entry its own timeout for the state, as for any new connection."""
    per = min(255, (maxlen - _HEADER.size) // (_ENTRY.size + 12))
    if per < 1:
        raise ValueError(f"sync maxlen {maxlen} holds no entry")
    out: list[bytes] = []
    batch: list[bytes] = []
    for c in conns:
        if c.client.version != 4:
            raise ValueError(f"{c.client}: IPv6 entries are not replayed")
        flags = 0 if c.state == "ESTABLISHED" or c.protocol == 17 else CONN_F_INACTIVE
        batch.append(_ENTRY.pack(0, c.protocol, _ENTRY.size + 12, flags, _state_number(c), c.cport, c.vport,
                                 c.dport, 0, 0) + c.client.packed + c.vip.packed + c.server.packed)
        if len(batch) == per:
            out.append(_message(batch, syncid))
            batch = []
    if batch:
        out.append(_message(batch, syncid))
    return out


def _message(entries: list[bytes], syncid: int) -> bytes:
    body = b"".join(entries)
    return _HEADER.pack(0, syncid, _HEADER.size + len(body), len(entries), 1, 0) + body


_TCP_NAMES = {v: k for k, v in TCP_STATES.items()}


def decode_sync(data: bytes) -> tuple[int, list[Conn]]:
    """(syncid, IPv4 entries) of a v1 message, checked as the kernel checks it (for tests and the drill)."""
    if len(data) < _HEADER.size:
        raise ValueError("sync message shorter than its header")
    reserved, syncid, size, count, version, spare = _HEADER.unpack_from(data)
    if size != len(data) or reserved or spare or version != 1:
        raise ValueError(f"not a v1 sync message (size {size} of {len(data)}, version {version})")
    conns, at = [], _HEADER.size
    for _ in range(count):
        if at + _ENTRY.size + 12 > len(data):
            raise ValueError("sync message truncated")
        kind, proto, ver_size, _flags, state, cport, vport, dport, _mark, _timeout = _ENTRY.unpack_from(data, at)
        length = ver_size & 0x0FFF
        if kind != 0 or ver_size >> 12 or length < _ENTRY.size + 12:
            raise ValueError(f"sync entry type {kind}, version {ver_size >> 12}, size {length}")
        a = at + _ENTRY.size
        caddr, vaddr, daddr = (ipaddress.IPv4Address(data[a + i:a + i + 4]) for i in (0, 4, 8))
        conns.append(Conn(proto, caddr, cport, vaddr, vport, daddr, dport,
                          _TCP_NAMES.get(state, str(state)) if proto == 6 else "UDP"))
        at += (length + 3) & ~3
    return syncid, conns


# ------------------------------------------------------------------------------ the catch-up channel

MAGIC = b"HVCU"
CHANNEL_VERSION = 1
REQUEST, ANSWER = 1, 2
_CH = struct.Struct("!4sBBQ")  # magic, version, kind, nonce
_ANSWER = struct.Struct("!HHI")  # part, parts, total tuples
_KEY4 = struct.Struct("!B4sH4sH4sH")
PART_BYTES = 1200  # an answer part stays under any sane MTU


@dataclass(frozen=True)
class Request:
    nonce: int
    syncid: int = 0


@dataclass(frozen=True)
class AnswerPart:
    nonce: int
    part: int
    parts: int
    total: int
    keys: tuple[Key, ...]


def encode_request(req: Request) -> bytes:
    return _CH.pack(MAGIC, CHANNEL_VERSION, REQUEST, req.nonce) + bytes([req.syncid])


def encode_answer(nonce: int, keys: Iterable[Key]) -> list[bytes]:
    """The replayed tuples in parts (at least one, so an empty table is an answer too)."""
    ks = [k for k in keys if k.client.version == 4]
    per = (PART_BYTES - _CH.size - _ANSWER.size) // _KEY4.size
    chunks = [ks[i:i + per] for i in range(0, len(ks), per)] or [[]]
    return [_CH.pack(MAGIC, CHANNEL_VERSION, ANSWER, nonce) + _ANSWER.pack(i, len(chunks), len(ks))
            + b"".join(_KEY4.pack(k.protocol, k.client.packed, k.cport, k.vip.packed, k.vport, k.server.packed,
                                  k.dport) for k in chunk)
            for i, chunk in enumerate(chunks)]


def decode_channel(data: bytes) -> Request | AnswerPart:
    if len(data) < _CH.size:
        raise ValueError("catch-up datagram too short")
    magic, version, kind, nonce = _CH.unpack_from(data)
    if magic != MAGIC or version != CHANNEL_VERSION:
        raise ValueError("not a havs catch-up datagram of this version")
    body = data[_CH.size:]
    if kind == REQUEST:
        if len(body) != 1:
            raise ValueError("catch-up request: bad length")
        return Request(nonce, body[0])
    if kind != ANSWER or len(body) < _ANSWER.size or (len(body) - _ANSWER.size) % _KEY4.size:
        raise ValueError("catch-up answer: bad kind or length")
    part, parts, total = _ANSWER.unpack_from(body)
    if part >= parts:
        raise ValueError(f"catch-up answer: part {part} of {parts}")
    keys = tuple(_keys(body[_ANSWER.size:]))
    return AnswerPart(nonce, part, parts, total, keys)


def _keys(data: bytes) -> Iterator[Key]:
    for proto, c, cp, v, vp, d, dp in _KEY4.iter_unpack(data):
        yield Key(proto, ipaddress.IPv4Address(c), cp, ipaddress.IPv4Address(v), vp, ipaddress.IPv4Address(d), dp)


class Assembly:
    """An answer's parts, collected for one nonce; `done()` is the whole tuple set once every part came."""

    def __init__(self, nonce: int) -> None:
        self.nonce = nonce
        self.parts: dict[int, tuple[Key, ...]] = {}
        self.expected: int | None = None
        self.total = 0

    def add(self, part: AnswerPart) -> bool:
        """False: not for this nonce, or inconsistent with the parts already here (ignored)."""
        if part.nonce != self.nonce or (self.expected is not None and (part.parts, part.total) !=
                                         (self.expected, self.total)):
            return False
        self.expected, self.total = part.parts, part.total
        self.parts[part.part] = part.keys
        return True

    def done(self) -> frozenset[Key] | None:
        if self.expected is None or len(self.parts) < self.expected:
            return None
        keys = frozenset(k for ks in self.parts.values() for k in ks)
        return keys if len(keys) == self.total else None
