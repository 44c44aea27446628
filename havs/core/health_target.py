"""What one health-check loop probes: a real server's check as it applies to it (the address and port
to connect to, the check settings) and the status codes that count as healthy. Pure; the probe loops are
havs.health_service's."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from havs.core.health import server_name
from havs.core.model import Check, RealServer, VirtualService

Key = tuple[str, str]  # (service name, real server "address:port")


@functools.lru_cache(maxsize=256)
def ok_codes(expect_status: tuple[str, ...]) -> frozenset[int]:
    # the model parses ranges on each call; a frozenset makes the per-check test one hash lookup
    check = Check(expect_status=list(expect_status))
    return frozenset(code for code in range(100, 600) if check.status_ok(code))


@dataclass(frozen=True)
class Target:
    """What one loop probes: the check as it applies to one real server of one service."""

    service: str
    server: str
    address: str
    port: int
    check: Check

    @classmethod
    def of(cls, vs: VirtualService, rs: RealServer) -> Target:
        check = vs.real_server_check(rs)
        port = vs.real_server_port(rs)
        return cls(
            service=vs.name,
            server=server_name(rs.address, port),
            address=str(check.connect_address or rs.address),
            port=check.connect_port or port,
            check=check,
        )

    @property
    def key(self) -> Key:
        return (self.service, self.server)
