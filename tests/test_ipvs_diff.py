"""diff(actual, desired): minimal, ordered, edits never become delete+add; apply_ops models the kernel."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from havs.core.ipvs_diff import (
    AddDestination,
    AddService,
    DeleteDestination,
    DeleteService,
    EditDestination,
    EditService,
    OpRejected,
    apply_ops,
    diff,
    drift,
)
from havs.core.ipvs_table import (
    Destination,
    DestinationKey,
    DestinationStats,
    IpvsTable,
    Service,
    ServiceKey,
    Stats,
)

VIP = ServiceKey.tcp("192.168.0.108", 80)
RS1 = Destination.at("192.168.72.128", 80, weight=1)
RS2 = Destination.at("192.168.72.129", 80, weight=1)


def table(*entries: tuple[Service, list[Destination]]) -> IpvsTable:
    return IpvsTable(entries)


def test_from_empty_adds_service_then_its_destinations() -> None:
    want = table((Service(VIP, "rr"), [RS1, RS2]))
    ops = diff(IpvsTable(), want)
    assert ops == [AddService(Service(VIP, "rr")), AddDestination(VIP, RS1), AddDestination(VIP, RS2)]


def test_same_table_no_ops_and_counters_do_not_count() -> None:
    a = table((Service(VIP, "rr"), [RS1]))
    busy = IpvsTable([(Service(VIP, "rr"), [RS1])], service_stats={VIP: Stats(conns=5)},
                     destination_stats={(VIP, RS1.key): DestinationStats(active_conns=3)})
    assert busy == a
    assert diff(busy, a) == []


def test_weight_change_is_one_edit_carrying_the_full_record() -> None:
    old = table((Service(VIP, "rr"), [RS1, RS2]))
    drained = Destination.at("192.168.72.129", 80, weight=0)
    ops = diff(old, table((Service(VIP, "rr"), [RS1, drained])))
    assert ops == [EditDestination(VIP, drained, previous=RS2)]
    assert ops[0].destination.forwarding == "masq"  # complete: a partial set would make it DR


def test_forwarding_and_threshold_changes_are_edits() -> None:
    old = table((Service(VIP, "rr"), [RS1]))
    new_rs = Destination.at("192.168.72.128", 80, forwarding="route", upper_threshold=10)
    assert diff(old, table((Service(VIP, "rr"), [new_rs]))) == [EditDestination(VIP, new_rs, previous=RS1)]


def test_scheduler_and_persistence_change_is_edit_service_not_delete_add() -> None:
    old = table((Service(VIP, "rr"), [RS1]))
    svc = Service(VIP, "wlc", persistent=True, timeout=300, netmask="255.255.255.0")
    assert diff(old, table((svc, [RS1]))) == [EditService(svc, previous=Service(VIP, "rr"))]


def test_port_change_is_delete_and_add_because_the_key_changed() -> None:
    old = table((Service(VIP, "rr"), [RS1]))
    moved = Destination.at("192.168.72.128", 8080)
    assert diff(old, table((Service(VIP, "rr"), [moved]))) == [DeleteDestination(VIP, RS1),
                                                               AddDestination(VIP, moved)]


def test_unmanaged_services_are_left_alone_unless_purge_or_managed() -> None:
    other = ServiceKey.udp("10.9.9.9", 53)
    actual = table((Service(VIP, "rr"), [RS1]), (Service(other, "rr"), [RS2]))
    want = table((Service(VIP, "rr"), [RS1]))
    assert diff(actual, want) == []
    assert diff(actual, want, managed={other}) == [DeleteService(Service(other, "rr"))]
    assert diff(actual, want, purge_unmanaged=True) == [DeleteService(Service(other, "rr"))]


def test_destination_deletes_come_before_service_deletes() -> None:
    gone = ServiceKey.udp("10.9.9.9", 53)
    actual = table((Service(gone, "rr"), [RS2]), (Service(VIP, "rr"), [RS1, RS2]))
    want = table((Service(VIP, "rr"), [RS1]))
    ops = diff(actual, want, purge_unmanaged=True)
    assert ops == [DeleteDestination(VIP, RS2), DeleteService(Service(gone, "rr"))]


def test_drift_words() -> None:
    actual = table((Service(VIP, "wlc"), [Destination.at("192.168.72.129", 80, weight=0)]))
    want = table((Service(VIP, "rr"), [RS1, RS2]))
    assert drift(actual, want) == [
        "TCP 192.168.0.108:80: scheduler wlc != rr",
        "TCP 192.168.0.108:80 -> 192.168.72.128:80 missing",
        "TCP 192.168.0.108:80 -> 192.168.72.129:80: weight 0 != 1",
    ]
    assert drift(want, IpvsTable(), purge_unmanaged=True) == ["TCP 192.168.0.108:80 unexpected"]


def test_apply_ops_rejects_what_the_kernel_rejects() -> None:
    t = table((Service(VIP, "rr"), [RS1]))
    with pytest.raises(OpRejected, match="EEXIST"):
        apply_ops(t, [AddService(Service(VIP, "rr"))])
    with pytest.raises(OpRejected, match="ENOENT"):
        apply_ops(t, [EditDestination(VIP, RS2)])
    with pytest.raises(OpRejected, match="ESRCH"):
        apply_ops(IpvsTable(), [AddDestination(VIP, RS1)])


def test_normalisation_makes_equal_things_equal() -> None:
    assert Service(VIP, "rr", timeout=300) == Service(VIP, "rr")  # not persistent: timeout meaningless
    assert Service(VIP, "rr", persistent=True, timeout=1, netmask=24).netmask == "255.255.255.0"
    six = ServiceKey.tcp("FD00:0::1", 80)
    assert six.address == "fd00::1" and six.family == "inet6"
    assert Service(six).netmask == 128
    assert Service(VIP, "rr", sched_flags=frozenset({"sh-port"})).sched_flags == {"flag-2"}
    assert str(ServiceKey.mark(42, "inet6")) == "FWM 42 IPv6"
    assert str(DestinationKey("fd00::2", 80)) == "[fd00::2]:80"
    with pytest.raises(ValueError):
        ServiceKey("inet", "fwmark", "10.0.0.1", 0, 1)
    with pytest.raises(ValueError):
        Service(VIP, "rr", sched_flags=frozenset({"bogus"}))


# ---- property: apply_ops(a, diff(a, b)) == b ----

_addr4 = st.sampled_from(["10.0.0.1", "10.0.0.2", "192.168.0.108", "172.16.0.1"])
_addr6 = st.sampled_from(["fd00::1", "fd00::2", "2001:db8::7"])
_keys = st.one_of(
    st.builds(ServiceKey.virtual, st.sampled_from(["tcp", "udp", "sctp"]), _addr4, st.sampled_from([80, 443])),
    st.builds(ServiceKey.virtual, st.sampled_from(["tcp", "udp"]), _addr6, st.sampled_from([80, 53])),
    st.builds(ServiceKey.mark, st.integers(1, 3), st.sampled_from(["inet", "inet6"])),
)


def _service(key: ServiceKey) -> st.SearchStrategy[Service]:
    return st.builds(
        Service, st.just(key), st.sampled_from(["rr", "wlc", "sh", "mh"]), st.booleans(),
        st.integers(0, 600), st.none(), st.sampled_from(["", "sip"]), st.booleans(),
        st.frozensets(st.sampled_from(["flag-1", "flag-2"])),
    )


_dests = st.builds(
    lambda addr, port, fwd, w, u, tt: Destination.at(addr, port, forwarding=fwd, weight=w,
                                                     upper_threshold=u, tunnel_type=tt),
    st.one_of(st.sampled_from(["192.168.72.128", "192.168.72.129", "192.168.72.130"]), _addr6),
    st.sampled_from([80, 8080]), st.sampled_from(["masq", "route", "tunnel", "local"]),
    st.integers(0, 3), st.sampled_from([0, 100]), st.sampled_from(["ipip", "gue", "gre"]),
)


@st.composite
def tables(draw: st.DrawFn) -> IpvsTable:
    keys = draw(st.lists(_keys, max_size=4, unique=True))
    entries = []
    for k in keys:
        svc = draw(_service(k))
        dests = draw(st.lists(_dests, max_size=4, unique_by=lambda d: d.key))
        entries.append((svc, dests))
    return IpvsTable(entries)


@settings(max_examples=150, deadline=None)
@given(tables(), tables())
def test_property_diff_then_apply_reaches_desired(a: IpvsTable, b: IpvsTable) -> None:
    ops = diff(a, b, purge_unmanaged=True)
    assert apply_ops(a, ops) == b
    assert diff(b, b) == []
    for op in ops:
        if isinstance(op, DeleteService):
            assert op.service.key not in b  # something present in both is never deleted
        if isinstance(op, DeleteDestination):
            assert op.service not in b or op.destination.key not in b[op.service].destinations
        if isinstance(op, AddService):
            assert op.service.key not in a
        if isinstance(op, AddDestination):
            assert op.service not in a or op.destination.key not in a[op.service].destinations
    # each service's add comes before any op on its destinations
    seen: set[ServiceKey] = set()
    for op in ops:
        if isinstance(op, AddService):
            seen.add(op.service.key)
        elif isinstance(op, AddDestination) and op.service not in a:
            assert op.service in seen
    # minimal: one op per differing record
    assert len([o for o in ops if isinstance(o, EditDestination)]) == sum(
        1 for k in a.keys() & b.keys() for dk in a[k].destinations.keys() & b[k].destinations.keys()
        if a[k].destinations[dk] != b[k].destinations[dk])


@settings(max_examples=50, deadline=None)
@given(tables(), tables())
def test_property_without_purge_foreign_services_survive(a: IpvsTable, b: IpvsTable) -> None:
    result = apply_ops(a, diff(a, b))
    for k in a:
        if k not in b:
            assert result[k] == a[k]
    for k in b:
        assert result[k] == b[k]
