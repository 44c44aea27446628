"""The catch-up's sockets and the kernel's connection table (docs/connection-sync.md).

`CatchUpSocket`: one UDP socket on the sync interface. It receives catch-up requests (multicast to the
sync group on `catchup_port`) and answers (unicast to it), sends requests, answers and the replayed sync
messages (to the sync group on the kernel's sync port, where the other director's backup sync thread
listens). Multicast loop is off: the sender's own backup thread must not take back its replay.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from havs.core.ipvs_sync_wire import SYNC_GROUP, SYNC_PORT

CONN_TABLE = "/proc/net/ip_vs_conn"
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def read_conn_table(path: str = CONN_TABLE) -> str:
    """The kernel's connection table as text (blocking: big tables take a moment; call it on a thread)."""
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


class CatchUpSocket:
    def __init__(self, ifname: str, port: int, group: ipaddress.IPv4Address = SYNC_GROUP,
                 sync_port: int = SYNC_PORT) -> None:
        self.ifname, self.port, self.group, self.sync_port = ifname, port, group, sync_port
        self.sock: socket.socket | None = None

    def open(self) -> None:
        """OSError (no such interface, no capability) names the interface."""
        index = socket.if_nametoindex(self.ifname)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.ifname.encode())
            s.bind(("0.0.0.0", self.port))
            mreqn = struct.pack("4s4si", self.group.packed, b"\0\0\0\0", index)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            s.setblocking(False)
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"catch-up socket on {self.ifname} port {self.port}: {e.strerror or e}") from None
        self.sock = s

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def receive(self, limit: int = 64) -> list[tuple[bytes, tuple[str, int]]]:
        out: list[tuple[bytes, tuple[str, int]]] = []
        assert self.sock is not None
        for _ in range(limit):
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            out.append((data, addr))
        return out

    def request(self, data: bytes) -> None:
        self._send(data, (str(self.group), self.port))

    def answer(self, data: bytes, to: tuple[str, int]) -> None:
        self._send(data, to)

    def sync_message(self, data: bytes) -> None:
        self._send(data, (str(self.group), self.sync_port))

    def _send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.sock is not None
        try:
            self.sock.sendto(data, to)
        except BlockingIOError:  # a full buffer: wait for it once rather than lose a replay datagram
            self.sock.setblocking(True)
            try:
                self.sock.sendto(data, to)
            finally:
                self.sock.setblocking(False)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
