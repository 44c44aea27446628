"""ipvsadm-compatible rendering. Expected texts are real `ipvsadm` 1.31 output captured in the UML lab."""

from __future__ import annotations

from havs.core.ipvs_format import (
    _msort,
    format_connections,
    format_daemons,
    format_list,
    format_save,
    format_timeouts,
    ntop,
    to_json,
)
from havs.core.ipvs_table import (
    Connection,
    Destination,
    DestinationStats,
    IpvsTable,
    Service,
    ServiceKey,
    Stats,
    SyncDaemon,
    Timeouts,
)

LAB = IpvsTable([
    (Service(ServiceKey.tcp("10.0.0.1", 80), "rr", persistent=True, timeout=300, netmask="255.255.255.0"),
     [Destination.at("10.1.0.1", 80, weight=3, upper_threshold=100, lower_threshold=10)]),
    (Service(ServiceKey.mark(42, "inet6"), "sh", persistent=True, timeout=60, netmask=64,
             sched_flags=frozenset({"sh-fallback", "sh-port"})),
     [Destination.at("10.1.0.4", 0, forwarding="tunnel", tunnel_type="gre", tunnel_flags="csum"),
      Destination.at("10.1.0.2", 0, forwarding="tunnel", tunnel_type="gue", tunnel_port=6080,
                     tunnel_flags="csum")]),
    (Service(ServiceKey.udp("192.168.0.1", 5060), "mh", persistent=True, timeout=30, pe_name="sip",
             one_packet=True, sched_flags=frozenset({"mh-port"})), []),
    (Service(ServiceKey.sctp("fd00::1", 80), "wlc"), [Destination.at("fd00::2", 80, forwarding="route", weight=0)]),
])

LAB_LIST = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.1:80 rr persistent 300 mask 255.255.255.0
  -> 10.1.0.1:80                  Masq    3      0          0         $
UDP  192.168.0.1:5060 mh (mh-port) persistent 30 pe sip ops
SCTP [fd00::1]:80 wlc
  -> [fd00::2]:80                 Route   0      0          0         $
FWM  42 IPv6 sh (sh-fallback,sh-port) persistent 60 mask 64
  -> 10.1.0.2:0                   Tunnel  1      0          0         $
  -> 10.1.0.4:0                   Tunnel  1      0          0         $
""".replace("$\n", "\n")

LAB_SAVE = """\
-A -t 10.0.0.1:80 -s rr -p 300 -M 255.255.255.0
-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 3
-A -u 192.168.0.1:5060 -s mh -p 30 --pe sip -o -b mh-port
-A --sctp-service [fd00::1]:80 -s wlc
-a --sctp-service [fd00::1]:80 -r [fd00::2]:80 -g -w 0
-A -f 42 -6 -s sh -p 60 -M 64 -b sh-fallback,sh-port
-a -f 42 -6 -r 10.1.0.2:0 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum
-a -f 42 -6 -r 10.1.0.4:0 -i -w 1 --tun-type gre --tun-csum
"""


def test_list_matches_ipvsadm_byte_for_byte() -> None:
    assert format_list(LAB) == LAB_LIST


def test_save_matches_ipvsadm_and_thresholds_option() -> None:
    assert format_save(LAB) == LAB_SAVE
    assert "-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 3 -x 100 -y 10\n" in format_save(LAB, thresholds=True)


def test_stats_and_rate_columns() -> None:
    key = ServiceKey.tcp("192.168.0.108", 80)
    d = Destination.at("192.168.72.129", 80)
    t = IpvsTable([(Service(key, "rr"), [d])],
                  service_stats={key: Stats(10, 63, 50, 123_456_789, 2_000_000_000, 1, 2, 3, 4, 5)},
                  destination_stats={
                      (key, d.key): DestinationStats(Stats(10, 63, 50, 4096, 8192, 1, 2, 3, 4, 5), 2, 7)})
    assert format_list(t, "stats").splitlines()[1:] == [
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes",
        "  -> RemoteAddress:Port",
        "TCP  192.168.0.108:80                   10       63       50  123456K    2000M",
        "  -> 192.168.72.129:80                  10       63       50     4096     8192",
    ]
    assert format_list(t, "stats", exact=True).splitlines()[3].endswith(" 123456789 2000000000")
    assert format_list(t, "rate").splitlines()[1:] == [
        "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS",
        "  -> RemoteAddress:Port",
        "TCP  192.168.0.108:80                    1        2        3        4        5",
        "  -> 192.168.72.129:80                   1        2        3        4        5",
    ]
    assert format_list(t).splitlines()[-1] == "  -> 192.168.72.129:80            Masq    1      2          7         "


def test_order_follows_ipvsadm_int_subtraction_compare() -> None:
    # ntohl(192.168.0.1) - ntohl(10.0.0.1) overflows int: ipvsadm lists 192.168.x before 10.x
    t = IpvsTable([(Service(ServiceKey.tcp("10.0.0.1", 80)), []),
                   (Service(ServiceKey.tcp("192.168.0.1", 80)), []),
                   (Service(ServiceKey.tcp("10.0.0.2", 80)), [])])
    lines = [line.split()[1] for line in format_list(t).splitlines()[3:]]
    assert lines == ["192.168.0.1:80", "10.0.0.1:80", "10.0.0.2:80"]


def test_msort_is_stable_merge() -> None:
    assert _msort([3, 1, 2, 1], lambda a, b: a - b) == [1, 1, 2, 3]
    pairs = [(1, "a"), (0, "b"), (1, "c"), (0, "d")]
    assert _msort(pairs, lambda a, b: a[0] - b[0]) == [(0, "b"), (0, "d"), (1, "a"), (1, "c")]


def test_ntop_like_glibc() -> None:
    assert ntop("fd00::1") == "fd00::1"
    assert ntop("::ffff:1.2.3.4") == "::ffff:1.2.3.4"
    assert ntop("::1.2.3.4") == "::1.2.3.4"
    assert ntop("1:0:2::3") == "1:0:2::3"
    assert ntop("::") == "::"
    assert ntop("fd00::") == "fd00::"


def test_long_ipv4_names_are_cut_like_ipvsadm() -> None:
    t = IpvsTable([(Service(ServiceKey.sctp("255.255.255.254", 65535), "lblcr"),
                    [Destination.at("255.255.255.253", 65535, weight=65535)])])
    lines = format_list(t).splitlines()
    assert lines[3] == "SCTP 255.255.255.254:65535 lblcr"
    assert lines[4] == "  -> 255.255.255.253:65535        Masq    65535  0          0         "


def test_tun_info_thresholds_persistent_conn() -> None:
    tun = format_list(LAB, "tun-info").splitlines()
    assert tun[2] == "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn"
    assert tun[-2] == "  -> 10.1.0.2:0                   Tunnel  gue:6080:+c   1      0          0         "
    assert tun[-1] == "  -> 10.1.0.4:0                   Tunnel  gre:+c        1      0          0         "
    thr = format_list(LAB, "thresholds").splitlines()
    assert thr[4] == "  -> 10.1.0.1:80                  100        10         0          0         "
    pc = format_list(LAB, "persistent-conn").splitlines()
    assert pc[1] == "Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn "


def test_timeouts_daemons_connections() -> None:
    assert format_timeouts(Timeouts(900, 120, 300)) == "Timeout (tcp tcpfin udp): 900 120 300\n"
    assert format_daemons([SyncDaemon("master", "eth0", 7, maxlen=1472, group="224.0.0.81", port=8848, ttl=1)]) \
        == "master sync daemon (mcast=eth0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
    c = Connection("TCP", "192.168.0.10", 54321, "192.168.0.108", 80, "192.168.72.129", 80, "TIME_WAIT", 98)
    assert format_connections([c]).splitlines() == [
        "IPVS connection entries",
        "pro expire state       source             virtual            destination",
        "TCP 01:38  TIME_WAIT   192.168.0.10:54321 192.168.0.108:80   192.168.72.129:80",
    ]


def test_json_shape() -> None:
    j = to_json(LAB)
    assert [s["name"] for s in j["services"]] == ["TCP 10.0.0.1:80", "UDP 192.168.0.1:5060",
                                                  "SCTP [fd00::1]:80", "FWM 42 IPv6"]
    first = j["services"][0]
    assert first["persistent"] is True and first["netmask"] == "255.255.255.0"
    assert first["destinations"][0]["upper_threshold"] == 100
    assert j["services"][3]["sched_flags"] == ["sh-fallback", "sh-port"]
