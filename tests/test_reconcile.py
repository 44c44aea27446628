"""The one reconcile pass, against a fake IPVS that applies ops: it programs, repairs drift, drains removed
servers, and survives anything the socket throws, repairing on the next pass."""

from __future__ import annotations

import asyncio
import errno

from fakes import FakeIpvs, ListLog

from havs.core.config import parse_config, select_node
from havs.core.controller import Controller
from havs.core.desired import Removals, build_desired
from havs.core.ipvs_table import IpvsTable, ServiceKey
from havs.errors import HavsError
from havs.reconcile import IpvsSide, Reconciler

CONFIG = """\
nodes:
  lvs1: {interfaces: {client: eth0}}
virtual_services:
  - address: 192.168.0.108
    port: 80
    scheduler: rr
    real_servers:
      - {address: 192.168.72.128}
      - {address: 192.168.72.129}
"""
VIP = ServiceKey.tcp("192.168.0.108", 80)


def desired(text: str = CONFIG):  # type: ignore[no-untyped-def]
    return build_desired(parse_config(text))


def servers(table: IpvsTable) -> list[str]:
    return sorted(str(d.key) for d in table.destinations(VIP)) if VIP in table else []


async def test_a_pass_programs_the_table_and_a_second_changes_nothing() -> None:
    ipvs, log = FakeIpvs(), ListLog()
    rec = Reconciler(ipvs, log)
    first = await rec.run_pass(desired())
    assert first.error is None and len(first.ops) == 3
    assert ipvs.table == desired().table
    second = await rec.run_pass(desired())
    assert second.ops == [] and rec.counters().passes == 2 and rec.counters().ops_applied == 3
    assert [kw["op"] for kw in log.named("ipvs.apply")] == ["AddService", "AddDestination", "AddDestination"]


async def test_drift_is_logged_and_repaired() -> None:
    ipvs, log = FakeIpvs(), ListLog()
    rec = Reconciler(ipvs, log)
    await rec.run_pass(desired())
    ipvs.table = IpvsTable([])  # ipvsadm -C behind our back
    await rec.run_pass(desired())
    assert ipvs.table == desired().table
    assert rec.drift_repairs == 1 and log.named("ipvs.drift")[0]["count"] >= 1


async def test_enobufs_on_a_dump_is_counted_logged_once_and_the_next_pass_repairs() -> None:
    ipvs, log = FakeIpvs(), ListLog()
    rec = Reconciler(ipvs, log)
    ipvs.fail_dump = [OSError(errno.ENOBUFS, "No buffer space available")] * 3
    for _ in range(3):
        result = await rec.run_pass(desired())
        assert result.stage == "dump" and isinstance(result.error, OSError)
    assert ipvs.table == IpvsTable([]) and rec.pass_failures == 3
    [failed] = log.named("ipvs.pass_failed")  # once per kind, not once per pass
    assert (failed["stage"], failed["errno"], failed["error_type"]) == ("dump", errno.ENOBUFS, "OSError")
    result = await rec.run_pass(desired())
    assert result.error is None and ipvs.table == desired().table
    assert log.named("ipvs.pass_recovered") == [{"after": "dump", "failed_passes": 3}]


async def test_any_exception_while_applying_is_caught_and_a_new_kind_is_logged_again() -> None:
    ipvs, log = FakeIpvs(), ListLog()
    rec = Reconciler(ipvs, log)
    ipvs.fail_apply = [RuntimeError("codec bug")]
    ipvs.fail_dump = [HavsError("netlink: bad message")]
    assert (await rec.run_pass(desired())).stage == "dump"
    result = await rec.run_pass(desired())
    assert result.stage == "apply" and isinstance(result.error, RuntimeError)
    assert [kw["stage"] for kw in log.named("ipvs.pass_failed")] == ["dump", "apply"]
    await rec.run_pass(desired())
    assert ipvs.table == desired().table and rec.counters().pass_failures == 2
    assert log.named("ipvs.drift") == []  # a failed pass leaves no expectation to drift from


async def test_a_removed_server_drains_at_weight_0_then_is_deleted() -> None:
    ipvs, removals = FakeIpvs(), Removals()
    rec = Reconciler(ipvs, ListLog())
    await rec.run_pass(desired(), removals=removals, now=0.0, drain_timeout=30)
    smaller = desired(CONFIG.replace("      - {address: 192.168.72.129}\n", ""))
    await rec.run_pass(smaller, removals=removals, now=1.0, drain_timeout=30)
    weights = {str(d.key): d.weight for d in ipvs.table.destinations(VIP)}
    assert weights == {"192.168.72.128:80": 1, "192.168.72.129:80": 0}
    await rec.run_pass(smaller, removals=removals, now=31.0, drain_timeout=30)
    assert servers(ipvs.table) == ["192.168.72.128:80"]


async def test_dry_run_plans_without_applying_and_without_removals_deletes_at_once() -> None:
    ipvs = FakeIpvs()
    rec = Reconciler(ipvs)  # no log: `havs apply` prints
    plan = await rec.run_pass(desired(), dry_run=True)
    assert len(plan.ops) == 3 and ipvs.table == IpvsTable([])
    await rec.run_pass(desired())
    await rec.run_pass(desired(CONFIG.replace("      - {address: 192.168.72.129}\n", "")))
    assert servers(ipvs.table) == ["192.168.72.128:80"]


SYNCED = """\
nodes:
  lvs1: {interfaces: {client: eth0, server: eth1}}
vrrp:
  router_id: 51
  interface: server
  addresses: [{address: 192.168.0.108/24, interface: client}]
  connection_sync: {interface: server, sync_id: 3, mode: follow}
"""


def controller(text: str = CONFIG) -> Controller:
    return Controller(select_node(parse_config(text), "lvs1", "lvs1"))


async def test_sync_runs_are_serialised_and_plan_for_the_latest_state() -> None:
    c, ipvs, log = controller(SYNCED), FakeIpvs(), ListLog()
    side = IpvsSide(c, log, lambda: ipvs)
    assert await side.open()
    await side.sync_connections()
    assert set(ipvs.sync) == {"backup"}
    ipvs.netlink_delay = 0.02
    c.vrrp_changed("VI_1", "MASTER")
    first = asyncio.ensure_future(side.sync_connections())
    await asyncio.sleep(0.03)  # the first run has planned for MASTER and is stopping the backup thread
    c.vrrp_changed("VI_1", "BACKUP")
    await asyncio.gather(first, side.sync_connections())
    assert set(ipvs.sync) == {"backup"} and log.named("ipvs.sync_daemon_failed") == []


async def test_the_ipvs_side_opens_once_says_why_it_cannot_and_runs_the_controllers_passes() -> None:
    class NoModule(FakeIpvs):
        async def open(self) -> FakeIpvs:
            raise OSError(errno.ENOENT, "ip_vs: no such family (module not loaded)")

    log = ListLog()
    side = IpvsSide(controller(), log, NoModule)
    assert not await side.open() and side.reconciler is None and await side.run_pass({}) is None
    assert "module not loaded" in log.named("ipvs.unavailable")[0]["error"]
    ipvs = FakeIpvs()
    side = IpvsSide(controller(), log, lambda: ipvs)
    assert await side.open()
    opened = side.reconciler
    assert await side.open() and side.reconciler is opened  # once
    planned = await side.run_pass({})
    assert planned is not None and ipvs.table == planned.table == desired().table
    assert side.counters() == opened.counters() and side.last_actual is not None  # type: ignore[union-attr]
