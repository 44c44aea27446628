"""IpvsSocket against the real kernel, with the real ipvsadm as the independent oracle.

Runs inside the UML lab: ``python -m integration.lab pytest integration/test_ipvs_uml.py``.
Each test gets a fresh network namespace (IPVS state is per namespace) and programs it through
``IpvsSocket(netns=...).apply(diff(...))`` — the same path the daemon uses.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from havs.core.ipvs_diff import AddDestination, AddService, DeleteDestination, EditDestination, EditService, diff
from havs.core.ipvs_format import format_daemons, format_list, format_save, format_timeouts
from havs.core.ipvs_table import Destination, IpvsTable, Service, ServiceKey
from havs.edge.ipvs import IpvsSocket, NetlinkError

pytestmark = pytest.mark.uml

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf")
_ids = itertools.count(1)


def sh(ns: str, *argv: str, input: str | None = None) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{argv}: {r.stderr}"
    return r.stdout


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"ipvs-t{next(_ids)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        sh(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
async def ipvs(ns: str) -> AsyncIterator[IpvsSocket]:
    s = IpvsSocket(netns=ns)
    await s.open()
    try:
        yield s
    finally:
        s.close()


def every_feature() -> IpvsTable:
    """One service per scheduler plus every protocol, family, flag and forwarding method."""
    entries: list[tuple[Service, list[Destination]]] = []
    for i, sched in enumerate(SCHEDULERS):
        flags = {"sh": {"sh-fallback", "sh-port"}, "mh": {"mh-fallback", "mh-port"}}.get(sched, set())
        svc = Service(ServiceKey.tcp(f"10.0.0.{i + 1}", 80), sched, sched_flags=frozenset(flags))
        entries.append((svc, [Destination.at("10.1.0.1", 80, weight=2),
                              Destination.at("10.1.0.2", 8080, weight=0, upper_threshold=100, lower_threshold=10)]))
    entries += [
        (Service(ServiceKey.udp("192.168.0.108", 5060), "rr", persistent=True, timeout=60, pe_name="sip"),
         [Destination.at("192.168.72.128", 5060)]),
        (Service(ServiceKey.udp("192.168.0.108", 53), "rr", one_packet=True),
         [Destination.at("192.168.72.129", 53, forwarding="route", weight=3)]),
        (Service(ServiceKey.sctp("192.168.0.108", 3868), "wlc", persistent=True, timeout=300,
                 netmask="255.255.255.0"),
         [Destination.at("192.168.72.128", 3868)]),
        (Service(ServiceKey.tcp("fd00::108", 443), "wrr", persistent=True, timeout=120, netmask=64),
         [Destination.at("fd00:72::128", 443, weight=5), Destination.at("fd00:72::129", 8443, weight=1)]),
        (Service(ServiceKey.mark(42), "rr", persistent=True, timeout=30),
         [Destination.at("10.2.0.1", 0, forwarding="tunnel"),
          Destination.at("10.2.0.2", 0, forwarding="tunnel", tunnel_type="gue", tunnel_port=6080,
                         tunnel_flags="csum"),
          Destination.at("10.2.0.3", 0, forwarding="tunnel", tunnel_type="gue", tunnel_port=6081,
                         tunnel_flags="remcsum"),
          Destination.at("10.2.0.4", 0, forwarding="tunnel", tunnel_type="gre", tunnel_flags="csum"),
          Destination.at("10.2.0.5", 0, forwarding="tunnel", tunnel_type="gre"),
          Destination.at("10.2.0.6", 0, forwarding="route", weight=7)]),
        # mixed families: an IPv6 fwmark service tunnelling to IPv4 and IPv6 servers
        (Service(ServiceKey.mark(43, "inet6"), "sh", sched_flags=frozenset({"sh-port"})),
         [Destination.at("10.3.0.1", 0, forwarding="tunnel"), Destination.at("fd00:3::1", 0, forwarding="tunnel")]),
    ]
    return IpvsTable(entries)


async def program(ipvs: IpvsSocket, want: IpvsTable) -> None:
    results = await ipvs.apply(diff(await ipvs.dump(), want, purge_unmanaged=True))
    assert [str(e) for _op, e in results if e] == []


async def test_every_feature_programmed_and_listed_like_ipvsadm(ns: str, ipvs: IpvsSocket) -> None:
    want = every_feature()
    await program(ipvs, want)
    got = await ipvs.dump()
    assert got == want
    assert diff(got, want) == []
    info = await ipvs.info()
    assert format_list(got, info=info) == sh(ns, "ipvsadm", "-Ln")
    assert format_save(got) == sh(ns, "ipvsadm", "-Sn")
    for mode, flag in (("stats", "--stats"), ("rate", "--rate"), ("thresholds", "--thresholds"),
                       ("persistent-conn", "--persistent-conn"), ("tun-info", "--tun-info")):
        assert format_list(got, mode, info=info) == sh(ns, "ipvsadm", "-Ln", flag), mode  # type: ignore[arg-type]
    assert format_list(got, "stats", info=info, exact=True) == sh(ns, "ipvsadm", "-Ln", "--stats", "--exact")


async def test_save_is_restorable_and_round_trips(ns: str, ipvs: IpvsSocket) -> None:
    want = every_feature()
    await program(ipvs, want)
    saved = format_save(await ipvs.dump(), thresholds=True)
    await ipvs.flush()
    assert sh(ns, "ipvsadm", "-Sn") == ""
    sh(ns, "ipvsadm", "-R", input=saved)
    assert await ipvs.dump() == want  # thresholds too, thanks to -x/-y
    assert sh(ns, "ipvsadm", "-Sn") == format_save(want)


async def test_edits_are_in_place_and_one_op_each(ns: str, ipvs: IpvsSocket) -> None:
    vip = ServiceKey.tcp("192.168.0.108", 80)
    rs1, rs2 = Destination.at("192.168.72.128", 80), Destination.at("192.168.72.129", 80)
    await program(ipvs, IpvsTable([(Service(vip, "rr"), [rs1, rs2])]))

    drained = Destination.at("192.168.72.129", 80, weight=0)
    want = IpvsTable([(Service(vip, "rr"), [rs1, drained])])
    ops = diff(await ipvs.dump(), want)
    assert ops == [EditDestination(vip, drained, previous=rs2)]
    before = ipvs.ops_sent
    await program(ipvs, want)
    assert ipvs.ops_sent - before == 1
    assert "  -> 192.168.72.129:80            Masq    0      " in sh(ns, "ipvsadm", "-Ln")

    # scheduler + persistence: an edit, and nothing else changes (forwarding stays Masq)
    svc = Service(vip, "wlc", persistent=True, timeout=600, netmask="255.255.0.0")
    want = IpvsTable([(svc, [rs1, drained])])
    assert [type(o) for o in diff(await ipvs.dump(), want)] == [EditService]
    await program(ipvs, want)
    assert sh(ns, "ipvsadm", "-Sn").splitlines()[0] == "-A -t 192.168.0.108:80 -s wlc -p 600 -M 255.255.0.0"
    # forwarding / thresholds / tunnel settings: edits too
    tun = Destination.at("192.168.72.128", 80, forwarding="tunnel", tunnel_type="gue", tunnel_port=5555,
                         upper_threshold=9)
    want = IpvsTable([(svc, [tun, drained])])
    assert [type(o) for o in diff(await ipvs.dump(), want)] == [EditDestination]
    await program(ipvs, want)
    assert await ipvs.dump() == want
    # back to plain: persistence and pe removed by a complete edit
    want = IpvsTable([(Service(vip, "rr"), [rs1])])
    await program(ipvs, want)
    assert sh(ns, "ipvsadm", "-Sn") == ("-A -t 192.168.0.108:80 -s rr\n"
                                        "-a -t 192.168.0.108:80 -r 192.168.72.128:80 -m -w 1\n")


async def test_one_failure_does_not_stop_the_batch(ns: str, ipvs: IpvsSocket) -> None:
    vip = ServiceKey.tcp("192.168.0.108", 80)
    rs = Destination.at("192.168.72.128", 80)
    ops = [AddService(Service(vip, "rr")), AddService(Service(vip, "rr")),
           AddService(Service(ServiceKey.tcp("192.168.0.109", 80), "no-such-sched")),
           AddDestination(vip, rs), AddDestination(ServiceKey.tcp("10.9.9.9", 1), rs),
           DeleteDestination(vip, Destination.at("192.168.72.200", 80)),
           AddDestination(vip, Destination.at("192.168.72.129", 80, upper_threshold=1, lower_threshold=5))]
    ipvs.batch = 3  # errors spread over several batches
    results = await ipvs.apply(ops)
    errs = [(e.errno, str(e)) if e else None for _op, e in results]
    assert errs == [
        None,
        (17, "TCP 192.168.0.108:80: add service: Service already exists"),
        (2, "TCP 192.168.0.109:80: add service: Scheduler or persistence engine not found"),
        None,
        (3, "TCP 10.9.9.9:1 -> 192.168.72.128:80: add destination: Service not defined"),
        (2, "TCP 192.168.0.108:80 -> 192.168.72.200:80: delete destination: No such destination"),
        (34, "TCP 192.168.0.108:80 -> 192.168.72.129:80: add destination: Numerical result out of range"),
    ]
    assert await ipvs.dump() == IpvsTable([(Service(vip, "rr"), [rs])])


async def test_unmanaged_left_alone_and_purge(ns: str, ipvs: IpvsSocket) -> None:
    sh(ns, "ipvsadm", "-A", "-u", "10.9.9.9:53", "-s", "rr")
    mine = IpvsTable([(Service(ServiceKey.tcp("192.168.0.108", 80), "rr"), [])])
    await ipvs.apply(diff(await ipvs.dump(), mine))
    assert "UDP  10.9.9.9:53 rr" in sh(ns, "ipvsadm", "-Ln")
    await ipvs.apply(diff(await ipvs.dump(), mine, purge_unmanaged=True))
    assert await ipvs.dump() == mine


async def test_large_table_dump_diff_and_listing_order(ns: str, ipvs: IpvsSocket) -> None:
    rnd = random.Random(7)
    entries = []
    for i in range(300):
        first = rnd.choice([10, 172, 192, 203])
        key = ServiceKey.tcp(f"{first}.{rnd.randrange(256)}.{i // 256}.{i % 256}", rnd.choice([80, 443, 8080]))
        dests = {Destination.at(f"{rnd.choice([10, 192])}.72.{rnd.randrange(256)}.{rnd.randrange(1, 255)}",
                                rnd.choice([80, 81]), weight=rnd.randrange(5)) for _ in range(4)}
        entries.append((Service(key, rnd.choice(SCHEDULERS)), list({d.key: d for d in dests}.values())))
    want = IpvsTable(entries)
    await program(ipvs, want)
    got = await ipvs.dump()
    assert got == want and diff(got, want) == []
    assert format_list(got, info=await ipvs.info()) == sh(ns, "ipvsadm", "-Ln")
    assert format_save(got) == sh(ns, "ipvsadm", "-Sn")


async def test_flush_zero_timeouts(ns: str, ipvs: IpvsSocket) -> None:
    await program(ipvs, every_feature())
    await ipvs.zero()
    await ipvs.zero(ServiceKey.tcp("10.0.0.1", 80))
    with pytest.raises(NetlinkError) as e:
        await ipvs.zero(ServiceKey.tcp("10.99.0.1", 80))
    assert e.value.errno == 3
    await ipvs.set_timeouts(tcp=901, tcp_fin=121, udp=301)
    t = await ipvs.get_timeouts()
    assert (t.tcp, t.tcp_fin, t.udp) == (901, 121, 301)
    assert format_timeouts(t) == sh(ns, "ipvsadm", "-Ln", "--timeout")
    await ipvs.set_timeouts(udp=55)  # 0 = unchanged
    assert sh(ns, "ipvsadm", "-Ln", "--timeout") == "Timeout (tcp tcpfin udp): 901 121 55\n"
    await ipvs.flush()
    assert len(await ipvs.dump()) == 0


async def test_sync_daemons(ns: str, ipvs: IpvsSocket) -> None:
    sh(ns, "ip", "link", "add", "sync0", "type", "dummy")
    sh(ns, "ip", "link", "set", "sync0", "up", "multicast", "on")
    sh(ns, "ip", "addr", "add", "10.77.0.1/24", "dev", "sync0")
    await ipvs.start_daemon("master", "sync0", 7, maxlen=1400, group="224.0.0.82", port=8850, ttl=2)
    await ipvs.start_daemon("backup", "sync0", 9)
    with pytest.raises(NetlinkError) as e:
        await ipvs.start_daemon("master", "sync0", 7)
    assert e.value.errno == 17
    daemons = await ipvs.daemons()
    assert {d.state for d in daemons} == {"master", "backup"}
    master = next(d for d in daemons if d.state == "master")
    assert (master.ifname, master.syncid, master.maxlen, master.group, master.port, master.ttl) == (
        "sync0", 7, 1400, "224.0.0.82", 8850, 2)
    assert format_daemons(daemons) == sh(ns, "ipvsadm", "-Ln", "--daemon")
    await ipvs.stop_daemon("master")
    await ipvs.stop_daemon("backup")
    assert await ipvs.daemons() == []
    assert sh(ns, "ipvsadm", "-Ln", "--daemon") == ""


async def test_state_is_per_namespace(ns: str, ipvs: IpvsSocket) -> None:
    await program(ipvs, IpvsTable([(Service(ServiceKey.tcp("192.168.0.108", 80), "rr"), [])]))
    other = f"ipvs-other{next(_ids)}"
    subprocess.run(["ip", "netns", "add", other], check=True)
    try:
        s2 = IpvsSocket(netns=other)
        try:
            assert len(await s2.dump()) == 0
        finally:
            s2.close()
    finally:
        subprocess.run(["ip", "netns", "del", other], check=False)
    with pytest.raises(FileNotFoundError):
        IpvsSocket(netns="no-such-netns").open_now()


async def test_stats_and_connections_after_real_traffic(fresh_lab: object) -> None:
    """The seed topology: program the seed service through havs, send HTTP, compare counters.
    A topology of its own: the connection table of the shared one holds other tests' connections."""
    from integration.topology import REAL_SERVERS, VIP, VIP_URL, SeedLab

    lab = fresh_lab
    assert isinstance(lab, SeedLab)
    lab.add_address("lvs1", "eth0", f"{VIP}/24")
    lab.add_address("lvs1", "eth1", "192.168.72.130/24")
    key = ServiceKey.tcp(VIP, 80)
    want = IpvsTable([(Service(key, "rr"), [Destination.at(ip, 80) for ip in REAL_SERVERS.values()])])
    ipvs = IpvsSocket(netns=lab.ns("lvs1"))
    try:
        await program(ipvs, want)
        for _ in range(4):
            lab.http_get("client", VIP_URL, timeout=10)
        # The kernel's estimator folds per-CPU counters into what it reports every 2 s.
        deadline = time.monotonic() + 15
        while True:
            got = await ipvs.dump()
            stats = got.service_stats(key)
            assert stats is not None
            if stats.conns == 4 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert stats.conns == 4 and stats.inpkts > 0
        real = lab.exec("lvs1", ["ipvsadm", "-Ln", "--stats"]).stdout
        assert format_list(got, "stats", info=await ipvs.info()) == real
        conns = ipvs.connections()
        assert len(conns) == 4 and {c.virtual for c in conns} == {VIP}
        assert {c.destination for c in conns} == set(REAL_SERVERS.values())
        await ipvs.zero()
        zeroed = (await ipvs.dump()).service_stats(key)
        assert zeroed is not None and zeroed.conns == 0
        assert "TCP  192.168.0.108:80                    0" in lab.exec("lvs1", ["ipvsadm", "-Ln", "--stats"]).stdout
    finally:
        ipvs.close()
