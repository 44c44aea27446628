"""The kernel's IPVS table over generic netlink: dump, apply ops, flush, zero, timeouts, info, sync daemons,
the connection table. The messages are built and read by `havs.core.ipvs_codec`; this is the socket.

Why our own codec and not pyroute2's IPVS layer, and why batches: docs/ipvs.md. In short, a batch of
requests goes out in one send() with NLM_F_ACK on the last one only: the kernel handles them in order,
always reports errors, and the final ack marks the end, so 11,000 ops cost ~90 syscalls, not 22,000.

Async on the caller's loop (non-blocking socket, `loop.sock_recv`). `IpvsSocket(netns="lb")` opens the
socket inside /run/netns/lb from a short-lived thread that setns()'s there (havs.edge.netns): no fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_mod
import os
import socket
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from havs.core.genl import (
    GENL_ID_CTRL,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    error_code,
    family_id,
    first_nest,
    genl_attrs,
    genl_message,
    getfamily_request,
    iter_messages,
    parse_attrs,
)
from havs.core.ipvs_codec import (
    CMD_ATTR_DAEMON,
    CMD_ATTR_DEST,
    CMD_ATTR_SERVICE,
    CMD_DEL_DAEMON,
    CMD_FLUSH,
    CMD_GET_CONFIG,
    CMD_GET_DAEMON,
    CMD_GET_DEST,
    CMD_GET_INFO,
    CMD_GET_SERVICE,
    CMD_NEW_DAEMON,
    CMD_SET_CONFIG,
    CMD_ZERO,
    IPVS_GENL_NAME,
    SVC_ATTR_STATS,
    SVC_ATTR_STATS64,
    LazyStats,
    daemon_attrs,
    daemon_state_nest,
    decode_daemon,
    decode_dest,
    decode_dest_fast,
    decode_dest_stats,
    decode_info,
    decode_service,
    decode_stats,
    decode_timeouts,
    encode_op,
    parse_ip_vs_conn,
    service_key_nest,
    timeouts_attrs,
)
from havs.core.ipvs_diff import (
    AddDestination,
    AddService,
    DeleteDestination,
    DeleteService,
    EditDestination,
    EditService,
    Op,
)
from havs.core.ipvs_table import Connection, Destination, IpvsInfo, IpvsTable, Service, ServiceKey, SyncDaemon, Timeouts
from havs.edge.netns import run_in_netns
from havs.errors import ApplyError, IpvsUnavailable

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

_T = TypeVar("_T")


# ---- errors, worded as ipvsadm (libipvs) words them ----
_MESSAGES: dict[tuple[type, int], str] = {
    (AddService, errno_mod.EEXIST): "Service already exists",
    (AddService, errno_mod.ENOENT): "Scheduler or persistence engine not found",
    (EditService, errno_mod.ESRCH): "No such service",
    (EditService, errno_mod.ENOENT): "Scheduler or persistence engine not found",
    (DeleteService, errno_mod.ESRCH): "No such service",
    (AddDestination, errno_mod.ESRCH): "Service not defined",
    (AddDestination, errno_mod.EEXIST): "Destination already exists",
    (EditDestination, errno_mod.ESRCH): "Service not defined",
    (EditDestination, errno_mod.ENOENT): "No such destination",
    (DeleteDestination, errno_mod.ESRCH): "Service not defined",
    (DeleteDestination, errno_mod.ENOENT): "No such destination",
}


def ipvs_strerror(op: Op | None, err: int) -> str:
    """libipvs's wording for an error, per operation."""
    if op is not None and (type(op), err) in _MESSAGES:
        return _MESSAGES[(type(op), err)]
    if err == errno_mod.EINVAL:
        return "Invalid operation.  Possibly wrong module version, address not unicast, ..."
    if err == errno_mod.EPERM:
        return "Permission denied (you must be root)"
    return os.strerror(err)


def apply_error(op: Op, err: int) -> ApplyError:
    verb = {AddService: "add service", EditService: "edit service", DeleteService: "delete service",
            AddDestination: "add destination", EditDestination: "edit destination",
            DeleteDestination: "delete destination"}[type(op)]
    return ApplyError(op.target, f"{verb}: {ipvs_strerror(op, err)}", err)


# ---- the socket ----
def _new_socket() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
    s.bind((0, 0))
    # Batches can produce many error replies at once: give them room (FORCE needs root).
    for force, plain, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, 8 << 20),
                               (SO_SNDBUFFORCE, socket.SO_SNDBUF, 4 << 20)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, size)
    with contextlib.suppress(OSError):  # errors echo only the failed request's header
        s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    return s


def _resolve_family(s: socket.socket, name: str) -> int:
    """GETFAMILY on a blocking socket (the kernel loads ip_vs on demand for this)."""
    s.send(getfamily_request(name))
    family = None
    while True:
        for kind, _flags, _seq, payload in iter_messages(s.recv(65536)):
            if kind == NLMSG_ERROR:
                err = error_code(payload)
                if err in (errno_mod.ENOENT, errno_mod.EOPNOTSUPP):
                    raise IpvsUnavailable("this kernel has no IPVS (modprobe ip_vs?)")
                if err:
                    raise OSError(err, f"resolving genl family {name}: {os.strerror(err)}")
                if family is None:
                    raise IpvsUnavailable("this kernel has no IPVS (modprobe ip_vs?)")
                return family
            if kind == GENL_ID_CTRL:
                family = family_id(payload) or family


class NetlinkError(OSError):
    """A kernel reply with a negative errno to a non-op request (dump, flush, daemon...)."""


class GenlChannel:
    """Requests and replies on one non-blocking generic-netlink socket: sequence numbers, one caller at a time
    (an asyncio.Lock), and replies matched to their request by sequence number, so the late replies of a
    cancelled request are skipped."""

    def __init__(self, sock: socket.socket, family: int) -> None:
        self.sock = sock
        self.family = family
        self._seq = 1
        self._lock: asyncio.Lock | None = None

    @property
    def lock(self) -> asyncio.Lock:
        if self._lock is None:  # made on first use: a lock belongs to the loop that runs it
            self._lock = asyncio.Lock()
        return self._lock

    def next_seq(self, n: int = 1) -> int:
        """The first of `n` consecutive sequence numbers."""
        seq = self._seq
        self._seq = (self._seq + n) & 0x7FFFFFFF or 1
        if self._seq < seq:  # wrapped: restart past zero so a batch never straddles the wrap
            seq, self._seq = 1, 1 + n
        return seq

    async def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except BlockingIOError:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def recv(self) -> bytes:
        try:
            return self.sock.recv(1 << 16)
        except BlockingIOError:
            return await asyncio.get_running_loop().sock_recv(self.sock, 1 << 16)

    async def replies(self, seq: int, dump: bool, pick: Callable[[memoryview], _T | None]) -> list[_T]:
        """What `pick` makes of each reply to request `seq` (None: skipped), until NLMSG_DONE (a dump) or
        the ack (anything else); a negative errno raises NetlinkError."""
        out: list[_T] = []
        while True:
            for kind, _flags, mseq, payload in iter_messages(await self.recv()):
                if mseq != seq:
                    continue  # a stale reply from a cancelled request
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    err = error_code(payload)
                    if err:
                        raise NetlinkError(err, os.strerror(err))
                    if not dump:
                        return out
                    continue
                item = pick(payload)
                if item is not None:
                    out.append(item)

    async def request(self, cmd: int, attrs: bytes = b"", *, dump: bool = False) -> list[dict[int, bytes]]:
        """One request; the top-level attributes of every reply."""
        async with self.lock:
            seq = self.next_seq()
            flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
            await self.send(genl_message(self.family, cmd, flags, seq, attrs))
            return await self.replies(seq, dump, genl_attrs)

    async def batch(self, messages: Callable[[int], bytes], n: int) -> dict[int, int]:
        """`n` requests in one send(), numbered from seq0 by `messages(seq0)`, only the last asking for an
        ack, which therefore arrives after every error the earlier ones produced. Returns {index: errno}.
        The caller holds the lock."""
        seq0 = self.next_seq(n)
        await self.send(messages(seq0))
        errors: dict[int, int] = {}
        while True:
            for kind, _flags, seq, payload in iter_messages(await self.recv()):
                i = seq - seq0
                if kind != NLMSG_ERROR or not 0 <= i < n:
                    continue
                err = error_code(payload)
                if err:
                    errors[i] = err
                if i == n - 1:
                    return errors


class IpvsSocket:
    """The kernel's IPVS (in `netns` if given) over one generic-netlink socket. Use it from one event loop;
    concurrent callers are served one request at a time."""

    def __init__(self, netns: str | None = None, *, batch: int = 256) -> None:
        """Nothing happens until `open()` (or the first request, which opens on demand)."""
        self.netns = netns
        self.batch = batch
        self._channel: GenlChannel | None = None
        self.ops_sent = 0  # IPVS write requests sent (for tests and benchmarks)

    def open_now(self) -> IpvsSocket:
        """Open the socket and find the IPVS family (blocking, ~1 ms; one round trip).
        Raises IpvsUnavailable when the kernel has no IPVS, FileNotFoundError for a missing netns."""
        self._open()
        return self

    def _open(self) -> GenlChannel:
        if self._channel is not None:
            return self._channel
        try:
            sock = run_in_netns(self.netns, _new_socket) if self.netns else _new_socket()
        except OSError as e:
            if e.errno == errno_mod.EPROTONOSUPPORT:
                raise IpvsUnavailable("this kernel has no generic netlink") from e
            raise
        try:
            family = _resolve_family(sock, IPVS_GENL_NAME)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        self._channel = GenlChannel(sock, family)
        return self._channel

    async def open(self) -> IpvsSocket:
        return self.open_now()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.sock.close()
            self._channel = None

    @property
    def sock(self) -> socket.socket:
        return self._open().sock

    @property
    def family(self) -> int:
        """The kernel's number for the IPVS family (0 until opened)."""
        return self._channel.family if self._channel is not None else 0

    def __enter__(self) -> IpvsSocket:
        return self.open_now()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> IpvsSocket:
        return self.open_now()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # ---- the table ----
    async def dump(self, *, yield_every: int = 64) -> IpvsTable:
        """The kernel's whole table, with counters: one service dump + one dest dump per service
        (the kernel has no all-destinations dump). Counters are decoded only when read.
        Yields to the loop every `yield_every` services so that VRRP never waits long."""
        ch = self._open()
        svc_replies = await ch.request(CMD_GET_SERVICE, dump=True)
        entries: list[tuple[Service, list[Destination]]] = []
        svc_stats = LazyStats(lambda a: decode_stats(a, SVC_ATTR_STATS64, SVC_ATTR_STATS))
        dst_stats = LazyStats(decode_dest_stats)

        def dest_nest(payload: memoryview) -> bytes | None:
            return first_nest(payload, CMD_ATTR_DEST)

        async with ch.lock:
            for i, top in enumerate(svc_replies):
                if CMD_ATTR_SERVICE not in top:
                    continue
                attrs = parse_attrs(top[CMD_ATTR_SERVICE])
                service, _ = decode_service(attrs, stats=False)
                key = service.key
                svc_stats.put(key, attrs)
                seq = ch.next_seq()
                await ch.send(genl_message(ch.family, CMD_GET_DEST, NLM_F_REQUEST | NLM_F_DUMP, seq,
                                           service_key_nest(key)))
                try:
                    nests = await ch.replies(seq, True, dest_nest)
                except NetlinkError as e:
                    if e.errno == errno_mod.ESRCH:  # deleted between the two dumps
                        continue
                    raise
                dests = []
                for nest in nests:
                    fast = decode_dest_fast(nest)
                    if fast is not None:
                        d, rest, conns = fast
                        dst_stats.put((key, d.key), (rest, conns))
                    else:
                        d, ds = decode_dest(parse_attrs(nest), key.family)
                        dst_stats.put_decoded((key, d.key), ds)
                    dests.append(d)
                entries.append((service, dests))
                if yield_every and i % yield_every == yield_every - 1:
                    await asyncio.sleep(0)
        return IpvsTable(entries, service_stats=svc_stats, destination_stats=dst_stats)

    async def apply(self, ops: Sequence[Op]) -> list[tuple[Op, ApplyError | None]]:
        """Send every op (in order, `batch` per send()); one failure does not stop the others.
        Returns each op with None or the ApplyError (errno + the service/destination named)."""
        results: list[tuple[Op, ApplyError | None]] = []
        ch = self._open()
        async with ch.lock:
            for start in range(0, len(ops), self.batch):
                chunk = ops[start:start + self.batch]
                last = len(chunk) - 1

                def messages(seq0: int, chunk: Sequence[Op] = chunk, last: int = last) -> bytes:
                    return b"".join(encode_op(ch.family, op, seq0 + i, NLM_F_REQUEST | (NLM_F_ACK if i == last else 0))
                                    for i, op in enumerate(chunk))

                errors = await ch.batch(messages, len(chunk))
                self.ops_sent += len(chunk)
                results.extend((op, apply_error(op, errors[i]) if i in errors else None)
                               for i, op in enumerate(chunk))
                if start + self.batch < len(ops):
                    await asyncio.sleep(0)  # let the loop breathe between batches
        return results

    async def flush(self) -> None:
        """`ipvsadm -C`: every service and destination goes."""
        await self._open().request(CMD_FLUSH)

    async def zero(self, service: ServiceKey | None = None) -> None:
        """`ipvsadm -Z [service]`: reset counters."""
        await self._open().request(CMD_ZERO, service_key_nest(service) if service else b"")

    # ---- settings and info ----
    async def get_timeouts(self) -> Timeouts:
        return decode_timeouts((await self._open().request(CMD_GET_CONFIG))[0])

    async def set_timeouts(self, tcp: int = 0, tcp_fin: int = 0, udp: int = 0) -> None:
        """`ipvsadm --set tcp tcpfin udp`; 0 leaves that timeout unchanged."""
        await self._open().request(CMD_SET_CONFIG, timeouts_attrs(tcp, tcp_fin, udp))

    async def info(self) -> IpvsInfo:
        return decode_info((await self._open().request(CMD_GET_INFO))[0])

    async def version(self) -> str:
        return (await self.info()).version

    # ---- sync daemons ----
    async def start_daemon(self, state: Literal["master", "backup"], ifname: str, syncid: int = 0, *,
                           maxlen: int = 0, group: str | None = None, port: int = 0, ttl: int = 0) -> None:
        """`ipvsadm --start-daemon`; EEXIST (as NetlinkError) if that state already runs."""
        d = SyncDaemon(state, ifname, syncid, maxlen, group, port, ttl)
        await self._open().request(CMD_NEW_DAEMON, daemon_attrs(d))

    async def stop_daemon(self, state: Literal["master", "backup"]) -> None:
        await self._open().request(CMD_DEL_DAEMON, daemon_state_nest(state))

    async def daemons(self) -> list[SyncDaemon]:
        replies = await self._open().request(CMD_GET_DAEMON, dump=True)
        return [decode_daemon(parse_attrs(r[CMD_ATTR_DAEMON])) for r in replies if CMD_ATTR_DAEMON in r]

    # ---- connection table ----
    def connections(self) -> list[Connection]:
        """The connection table (`ipvsadm -Lcn`), read from /proc in this socket's netns."""
        def read() -> str:
            with open("/proc/thread-self/net/ip_vs_conn" if self.netns else "/proc/net/ip_vs_conn") as f:
                return f.read()
        return parse_ip_vs_conn(run_in_netns(self.netns, read) if self.netns else read())
