"""VRRP adverts in the benchmarks: heard (`AdvertCapture`, `Gaps`) and sent (`AdvertSender`, a fake peer;
`start_reference`, keepalived as a reference sender).

`AdvertCapture` reads a raw protocol-112 socket (made in the listening node's namespace) from a thread and
keeps each packet with its time, source and priority; the benchmarks time takeovers and advert gaps from it.

Times: ``mono`` is time.monotonic() when the thread read the packet; ``stamp`` is the kernel's receive
timestamp (SO_TIMESTAMPNS, unix time), taken as the packet entered the listener's stack, so the reading
thread's own scheduling does not blur gaps measured with it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import socket
import statistics
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from havs.edge.netns import run_in_netns
from integration.benchlib import percentile, poll

GROUP = "224.0.0.18"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


@dataclass(frozen=True)
class Heard:
    stamp: float
    mono: float
    source: str
    priority: int


class AdvertCapture:
    """Every VRRP packet ``sock`` receives. ``local`` (the listener's address on the VRRP LAN) joins the
    VRRP group there, for when no daemon on the listening node has joined it."""

    def __init__(self, sock: socket.socket, local: str | None = None) -> None:
        self.heard: list[Heard] = []
        self.kernel_stamps = True  # False once a packet came without one (then stamp is derived from mono)
        self._sock = sock
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if local is not None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                            struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton(local)))
        sock.settimeout(0.2)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="advert-capture", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        space = socket.CMSG_SPACE(16)
        while not self._stop.is_set():
            try:
                pkt, anc, _flags, _addr = self._sock.recvmsg(2048, space)
            except TimeoutError:
                continue
            except OSError:
                return
            mono = time.monotonic()
            stamp = None
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                    sec, nsec = struct.unpack("qq", data[:16])
                    stamp = sec + nsec / 1e9
            if stamp is None:
                self.kernel_stamps = False
                stamp = time.time() - (time.monotonic() - mono)
            ihl = (pkt[0] & 0x0F) * 4
            if len(pkt) < ihl + 3:
                continue
            with self._cond:
                self.heard.append(Heard(stamp, mono, socket.inet_ntoa(pkt[12:16]), pkt[ihl + 2]))
                self._cond.notify_all()

    def _from(self, src: str) -> list[Heard]:
        with self._cond:
            return [h for h in self.heard if h.source == src]

    def adverts(self, src: str, t0: float, t1: float) -> list[tuple[float, float]]:
        """Adverts (priority > 0) from ``src`` read between monotonic t0 and t1: (kernel stamp, monotonic)."""
        return [(h.stamp, h.mono) for h in self._from(src) if h.priority > 0 and t0 <= h.mono <= t1]

    def next_advert(self, src: str, timeout: float) -> float | None:
        """Wait for the next packet from ``src``; when it was read (None on timeout)."""
        with self._cond:
            n = len(self.heard)
            found: list[Heard] = []

            def arrived() -> bool:
                found[:] = [h for h in self.heard[n:] if h.source == src]
                return bool(found)

            if not self._cond.wait_for(arrived, timeout):
                return None
            return found[0].mono

    def last_before(self, src: str, t: float) -> float | None:
        """When the last advert (priority > 0) from ``src`` at or before ``t`` was read."""
        return max((h.mono for h in self._from(src) if h.mono <= t and h.priority > 0), default=None)

    def resign(self, src: str, after: float) -> float | None:
        """When the first priority-0 advert from ``src`` after ``after`` was read (a master stepping down)."""
        return next((h.mono for h in self._from(src) if h.mono >= after and h.priority == 0), None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


@dataclass
class Gaps:
    """One sender's adverts in one window, and the gaps between them (kernel stamps)."""

    adverts: int = 0
    gaps: list[float] = field(default_factory=list)
    ends: list[tuple[float, float]] = field(default_factory=list)  # (gap, its end: seconds into the window)

    @classmethod
    def of(cls, heard: list[tuple[float, float]], excluded: Sequence[tuple[float, float]], t0: float) -> Gaps:
        """``heard`` as AdvertCapture.adverts returns it; ``excluded``: monotonic windows in which the sender
        was made silent on purpose (no gap is measured across them)."""
        g = cls(adverts=len(heard))
        kept = [(s, m) for s, m in heard if not any(a <= m <= b for a, b in excluded)]
        for (s_prev, m_prev), (s, m) in itertools.pairwise(kept):
            if any(m_prev <= b and m >= a for a, b in excluded):
                continue
            g.gaps.append(s - s_prev)
            g.ends.append((s - s_prev, m - t0))
        return g

    def cells(self, interval: float, slack: float) -> str:
        """adverts, median, p99, worst, worst - interval (ms) and whether worst <= interval + slack."""
        if not self.gaps:
            return f"{self.adverts:>8}  no gaps measured"
        worst = max(self.gaps)
        verdict = "met" if worst <= interval + slack else "MISSED"
        return (f"{self.adverts:>8}{statistics.median(self.gaps) * 1000:>10.1f}"
                f"{percentile(self.gaps, 0.99) * 1000:>8.1f}{worst * 1000:>9.1f}{(worst - interval) * 1000:>+10.1f}"
                f"{verdict:>8}")

    def longest(self, n: int = 5) -> str:
        return ", ".join(f"{g * 1000:.0f} (+{at:.1f}s)" for g, at in sorted(self.ends, reverse=True)[:n])


class AdvertSender:
    """A fake VRRP peer: adverts of ``priority`` sent from ``local`` on ``ifname`` in namespace ``ns`` (with
    havs's own wire encoder and socket), for as long as asked."""

    def __init__(self, ns: str, ifname: str, local: str, advert: float, version: int, router_id: int,
                 addresses: Sequence[str], *, priority: int) -> None:
        from havs.core import wire
        from havs.edge.vrrp_socket import VrrpSocket

        self._sock = run_in_netns(ns, lambda: VrrpSocket(ifname, ipaddress.IPv4Address(local)))
        interval = round(advert * 100) if version == 3 else round(advert)
        adv = wire.Advertisement(version=version, router_id=router_id, priority=priority,
                                 addresses=tuple(ipaddress.IPv4Address(a) for a in addresses),
                                 advert_interval=interval)
        self._dst = ipaddress.IPv4Address(GROUP)
        self._payload = wire.encode(adv, src=ipaddress.IPv4Address(local), dst=self._dst)
        self._advert = advert

    def advertise(self, seconds: float) -> tuple[float, float]:
        """Advertise every interval for ``seconds``; the monotonic window it did so in."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            self._sock.send(self._payload, self._dst)
            time.sleep(self._advert)
        return t0, time.monotonic()

    def close(self) -> None:
        self._sock.close()


def start_reference(lab: Any, node: str, advert: float, vrid: int, workdir: Path,
                    log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """keepalived 2.2.7 (VRRP only, C, its own timer) advertising ``vrid`` from ``node``'s eth0 at the same
    interval: what the lab itself (one UML CPU under load, on a shared host) does to a sender that holds no
    GIL. Returns the process and a note naming it (and its scheduling policy)."""
    version = 2 if advert == int(advert) else 3
    cfg = workdir / "ref-keepalived.conf"
    cfg.write_text(f"""global_defs {{
    router_id ref
}}
vrrp_instance REF {{
    state MASTER
    interface eth0
    virtual_router_id {vrid}
    version {version}
    priority 100
    advert_int {advert:g}
    virtual_ipaddress {{
        192.168.72.200/24 dev eth0
    }}
}}
""")
    vrrp_pid = workdir / "ref-vrrp.pid"
    argv = ["keepalived", "-n", "-l", "-D", "-G", "-P", "-f", str(cfg), "-p", str(workdir / "ref.pid"),
            "-r", str(vrrp_pid)]
    proc = lab.popen(node, argv, log)
    note = f"keepalived 2.2.7 VRRP-only, VRID {vrid} v{version} from {node}"
    if poll(vrrp_pid.exists, 20, 0.2) is not None:
        with contextlib.suppress(OSError, ValueError):
            vpid = int(vrrp_pid.read_text().split()[0])
            policy = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}.get(
                os.sched_getscheduler(vpid), "other")
            note += f" ({policy}, nice {os.getpriority(os.PRIO_PROCESS, vpid)})"
    return proc, note
