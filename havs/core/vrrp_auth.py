"""VRRP advert authentication: the HMAC-SHA256 trailer of keepalived 2.4's `auth_hmac`, byte for byte.

Pure: no sockets, no clock (the caller passes `wall`, UTC seconds as from `time.time()`). Reading a
`file:` key is the shell's (havs.vrrp.auth_keys).

Wire (keepalived 2.4.3, draft-cassen-vrrp-auth-hmac): a 28-byte trailer follows the VRRP message (after
the v2 auth data too):

    ext_type(1)=1  key_id(1)  reserved(2)=0  sec(4)  subsec(2)  ctr(2)  hmac(16)

sec.subsec.ctr is one 64-bit sequence: UTC seconds, a 1/65536 s fraction, a tie-breaker. The HMAC is
HMAC-SHA256 truncated to 16 bytes over a 20-byte pseudo-header (family 4|6, VRRP version, router id, 0,
the sender's address zero-padded to 16 bytes), then the message with its checksum field read as zero,
then the trailer up to the HMAC, then 16 zero bytes. The checksum stays out so one signature serves every
unicast peer (IPv4 v3 checksums differ per destination) and the kernel may fill the IPv6 one.

Receiving (same order as keepalived, so a flood of captured adverts costs no digest once stale):
malformed (ext_type ≠ 1 or reserved ≠ 0) → in `time` mode, |now − sec| > window is stale → unknown key
id → bad MAC (constant-time compare) → replay: the sequence must be strictly greater (serial arithmetic)
than the last one accepted from that sender; the mark moves only on a verified advert. In `time` mode a
mark older than the window expires, so a sender whose clock was stepped back recovers after the window;
a reordered advert (older than one already accepted) is a replay, as in keepalived.

Sending: the sequence is the larger of the clock and the last one + 1, so it grows even when the clock
does not. `time` mode restarts from the clock when the last sequence is more than the window ahead of it
(a clock stepped back: receivers would call everything stale); `monotonic` keeps strict growth. Nothing
is persisted: across a restart the sequence continues from the clock, which must have moved forward
(a clock stepped back over a restart makes a `monotonic` peer drop us until the clock catches up, as
keepalived does).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from havs.core.wire import IPAddress

EXT_TYPE_SHA256 = 1
TRAILER_LEN = 28
MAC_LEN = 16
KEY_MIN, KEY_MAX = 32, 64
WINDOW_MIN, WINDOW_MAX, WINDOW_FLOOR = 1, 300, 5
MCAST_SENDERS = 4  # keepalived's per-instance replay slots for multicast senders (LRU)

Mode = Literal["enforce", "permissive", "receive_only"]
AntiReplay = Literal["time", "monotonic"]

# the drop reasons, as counted in the VRRP snapshot (`dropped`) and named in `vrrp.auth_reject`
MISSING, MALFORMED, UNKNOWN_KEY, BAD_MAC, STALE, REPLAY = (
    "auth_missing", "auth_malformed", "auth_unknown_key", "auth_bad_mac", "auth_stale", "auth_replay")
REASONS = (MISSING, MALFORMED, UNKNOWN_KEY, BAD_MAC, STALE, REPLAY)


def default_window(advert_interval: float) -> int:
    """keepalived: max(3 × advert_int, 5) seconds, at most 300."""
    return min(WINDOW_MAX, max(WINDOW_FLOOR, int(3 * advert_interval)))


@dataclass(frozen=True)
class AuthParams:
    """What the core needs. `keys` are the key bytes by id (never logged: repr hides them)."""

    keys: dict[int, bytes] = field(repr=False)
    active_key: int
    anti_replay: AntiReplay = "time"
    time_window: int = WINDOW_FLOOR
    mode: Mode = "enforce"

    def __post_init__(self) -> None:
        if self.active_key not in self.keys:
            raise ValueError(f"active_key {self.active_key} is not one of the keys")
        for kid, key in self.keys.items():
            if not 1 <= kid <= 255 or not KEY_MIN <= len(key) <= KEY_MAX:
                raise ValueError(f"key {kid}: ids are 1..255, keys {KEY_MIN}..{KEY_MAX} bytes")

    @property
    def signs(self) -> bool:
        return self.mode != "receive_only"

    @property
    def fingerprint(self) -> dict[int, str]:
        """Key ids with a short digest of each key, safe to show: tells two directors' keys apart."""
        return {k: hashlib.sha256(b"havs-key-id" + v).hexdigest()[:8] for k, v in sorted(self.keys.items())}


# ------------------------------------------------------------------------------------------- keys


def parse_key(spec: str) -> bytes:
    """`hex:…` or plain ASCII text → key bytes (ValueError naming what is wrong, never the key)."""
    if spec.startswith("hex:"):
        digits = spec[4:]
        try:
            key = bytes.fromhex(digits)
        except ValueError:
            raise ValueError("hex: key is not an even number of hex digits") from None
    else:
        if not spec.isascii() or not spec.isprintable():
            raise ValueError("a text key must be printable ASCII (or use hex:)")
        key = spec.encode("ascii")
    if not KEY_MIN <= len(key) <= KEY_MAX:
        raise ValueError(f"key is {len(key)} bytes, must be {KEY_MIN}..{KEY_MAX} (openssl rand -hex 32)")
    return key


# ------------------------------------------------------------------------------------------- wire


def _pseudo(version: int, router_id: int, src: IPAddress) -> bytes:
    return bytes((src.version, version, router_id, 0)) + src.packed.ljust(16, b"\x00")


def mac(key: bytes, message: bytes, head: bytes, *, version: int, router_id: int, src: IPAddress) -> bytes:
    """The 16-byte HMAC for `message` (checksum read as zero) with trailer `head` (its first 12 bytes)."""
    data = b"".join((_pseudo(version, router_id, src), message[:6], b"\x00\x00", message[8:], head,
                     b"\x00" * MAC_LEN))
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_LEN]


def trailer(key_id: int, key: bytes, seq: int, message: bytes, *, version: int, router_id: int,
            src: IPAddress) -> bytes:
    """The 28-byte trailer signing `message` (whose checksum may be anything: it is not covered)."""
    head = struct.pack("!BBHIHH", EXT_TYPE_SHA256, key_id, 0, seq >> 32 & 0xFFFFFFFF, seq >> 16 & 0xFFFF,
                       seq & 0xFFFF)
    return head + mac(key, message, head, version=version, router_id=router_id, src=src)


def split(payload: bytes, family: int) -> tuple[bytes, bytes | None]:
    """(message, trailer or None). The trailer is recognised by length alone, exactly as keepalived does:
    the packet is the message its header announces plus exactly 28 bytes."""
    if len(payload) < 8:
        return payload, None
    alen = 4 if family == 4 else 16
    expected = 8 + payload[3] * alen + (8 if payload[0] >> 4 == 2 else 0)
    if len(payload) == expected + TRAILER_LEN:
        return payload[:expected], payload[expected:]
    return payload, None


def clock_seq(wall: float) -> int:
    sec = int(wall)
    subsec = int((wall - sec) * 65536) & 0xFFFF
    return (sec & 0xFFFFFFFF) << 32 | subsec << 16


def _after(a: int, b: int) -> bool:
    """RFC 1982 serial order over 64 bits."""
    d = (a - b) & 0xFFFFFFFFFFFFFFFF
    return 0 < d < 1 << 63


def _sdiff32(a: int, b: int) -> int:
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d >= 1 << 31 else d


class Authenticator:
    """Signs our adverts and checks the peers' for one VRRP instance: the send sequence and the replay
    marks (per sender, LRU-bounded so forged sources cannot grow it: a mark is made only after the MAC
    verified). `params` may be replaced on reload (key rotation) without losing either."""

    def __init__(self, params: AuthParams) -> None:
        self.params = params
        self.send_seq = 0
        self.marks: OrderedDict[IPAddress, int] = OrderedDict()
        self.last_skew: int = 0
        # our own adverts replayed at us are replays too (we never accept our own address's advert)
        self.own: tuple[IPAddress, int] | None = None

    def next_seq(self, wall: float) -> int:
        clk = clock_seq(wall)
        if _after(clk, self.send_seq):
            self.send_seq = clk
        elif (self.params.anti_replay == "time"
              and _sdiff32(self.send_seq >> 32, clk >> 32) > self.params.time_window):
            self.send_seq = clk  # clock stepped back: restart from it or receivers see everything stale
        else:
            self.send_seq = (self.send_seq + 1) & 0xFFFFFFFFFFFFFFFF
        return self.send_seq

    def sign(self, message: bytes, *, version: int, router_id: int, src: IPAddress, wall: float) -> bytes:
        """The trailer for `message` (b"" in receive_only). One per logical advert: every peer gets it."""
        p = self.params
        if not p.signs:
            return b""
        seq = self.next_seq(wall)
        self.own = (src, seq)
        return trailer(p.active_key, p.keys[p.active_key], seq, message, version=version, router_id=router_id,
                       src=src)

    def check(self, message: bytes, tail: bytes | None, *, version: int, router_id: int, src: IPAddress,
              wall: float) -> str | None:
        """None: accept. Otherwise the drop reason (one of REASONS)."""
        p = self.params
        if tail is None:
            return MISSING if p.mode == "enforce" else None
        ext_type, key_id, reserved, sec, subsec, ctr = struct.unpack_from("!BBHIHH", tail)
        if ext_type != EXT_TYPE_SHA256 or reserved != 0:
            return MALFORMED
        seq = sec << 32 | subsec << 16 | ctr
        now_sec = int(wall) & 0xFFFFFFFF
        if p.anti_replay == "time":
            # before the digest: a flood of captured adverts costs nothing once stale (never grants trust)
            self.last_skew = _sdiff32(now_sec, sec)
            if abs(self.last_skew) > p.time_window:
                return STALE
        key = p.keys.get(key_id)
        if key is None:
            return UNKNOWN_KEY
        if not hmac.compare_digest(mac(key, message, tail[:12], version=version, router_id=router_id, src=src),
                                   tail[12:]):
            return BAD_MAC
        if self.own is not None and src == self.own[0]:
            return REPLAY if not _after(seq, self.own[1]) else None
        mark = self.marks.get(src)
        if mark is not None and p.anti_replay == "time" and abs(_sdiff32(now_sec, mark >> 32)) > p.time_window:
            mark = None  # a mark outside the window orders nothing the window does not already reject
        if mark is not None and not _after(seq, mark):
            return REPLAY
        self.marks[src] = seq
        self.marks.move_to_end(src)
        while len(self.marks) > MCAST_SENDERS:
            self.marks.popitem(last=False)
        return None
