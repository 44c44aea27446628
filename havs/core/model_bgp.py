"""The `bgp:` section of the configuration model (re-exported by havs.core.model); the checks that need the
whole config (announce: bgp services) stay in havs.core.model."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from havs.core.model_base import IPAddress, Problem, Range, Strict

Asn = Annotated[int, Range(1, 4294967295)]
_COMMUNITY = re.compile(r"^(\d{1,5}):(\d{1,5})$")


class BgpNeighbor(Strict):
    """An upstream router this director announces its VIPs to (BIRD's `neighbor ADDRESS as ASN`)."""

    address: IPAddress
    asn: Asn
    password: Annotated[str, Field(min_length=1, max_length=80)] | None = None
    multihop: bool = Field(default=False, description="eBGP to a router that is not on a directly connected LAN")

    @field_validator("password")
    @classmethod
    def _quotable(cls, v: str | None) -> str | None:
        if v is not None and ('"' in v or "\\" in v or not v.isprintable()):
            raise ValueError("must be printable text without quotes or backslashes")
        return v


class Bfd(Strict):
    """Bidirectional Forwarding Detection on every BGP session: a dead director is dropped by the router
    within interval x multiplier instead of the BGP hold time."""

    enabled: bool = True
    interval: Annotated[float, Range(0.01, 10)] = 0.1
    multiplier: Annotated[int, Range(1, 255)] = 3


class Bgp(Strict):
    """Active-active announcement of `announce: bgp` services over BGP (BIRD 2 started by havs)."""

    asn: Asn = Field(description="this director's AS (the same on every director)")
    neighbors: list[BgpNeighbor] = Field(min_length=1)
    hold_time: Annotated[int, Range(3, 65535)] = 9
    keepalive_time: Annotated[int, Range(1, 21845)] = 3
    bfd: Bfd = Field(default_factory=Bfd)
    communities: list[str] = Field(default_factory=list, description="added to every announced VIP: 'ASN:value'")
    med: Annotated[int, Range(0, 4294967295)] | None = None
    bird: str = Field(default="bird", description="the BIRD 2 binary (a name on PATH or a path)")
    run_dir: str = Field(default="/run/havs/bird", description="BIRD's rendered config, control socket and log")
    loopback: str = Field(default="lo", description="where the VIPs are put (/32 or /128) so IPVS sees them as local")

    @field_validator("communities")
    @classmethod
    def _communities(cls, v: list[str]) -> list[str]:
        for item in v:
            m = _COMMUNITY.match(item)
            if not m or not all(int(g) <= 65535 for g in m.groups()):
                raise ValueError(f"a community is 'ASN:value' with both 0..65535, got {item!r}")
        return v

    @model_validator(mode="after")
    def _timers(self) -> Bgp:
        if self.keepalive_time * 3 > self.hold_time:
            raise Problem(("keepalive_time",), f"must be at most hold_time/3 ({self.hold_time}), got "
                                               f"{self.keepalive_time}")
        seen: set[str] = set()
        for i, n in enumerate(self.neighbors):
            if str(n.address) in seen:
                raise Problem(("neighbors", i, "address"), f"{n.address} is listed twice")
            seen.add(str(n.address))
        return self
