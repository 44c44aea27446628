"""The `vrrp:` section of the configuration model (re-exported by havs.core.model)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, SerializationInfo, field_serializer, model_validator

from havs.core.model_base import Interface, IPAddress, Problem, Range, Seconds, Strict
from havs.core.vrrp_auth import parse_key


class FloatingAddress(Strict):
    """An address owned by whichever director is MASTER, on one of its interfaces (by role name)."""

    address: Interface
    interface: str


class Garp(Strict):
    """Gratuitous ARP: a burst on takeover, then a refresh while MASTER (0 = off)."""

    burst: Annotated[int, Range(1, 100)] = 5
    burst_interval: Annotated[float, Range(0, 10)] = 0.02
    refresh: Annotated[float, Range(0, 3600)] = 10.0


class Notify(Strict):
    """Commands run (without a shell) on state changes, in order, with a timeout."""

    master: list[str] | None = None
    backup: list[str] | None = None
    fault: list[str] | None = None
    stop: list[str] | None = None
    timeout: Seconds = 10.0


class ConnectionSync(Strict):
    """The kernel's IPVS connection sync daemon, so established connections survive a failover."""

    interface: str = Field(description="role name of the sync interface")
    sync_id: Annotated[int, Range(0, 255)] = 0
    mode: Literal["both", "follow"] = Field(
        default="both", description="both: master and backup threads always; follow: master only while MASTER"
    )
    catchup_deadline: Annotated[float, Range(0, 3600)] = Field(
        default=30.0, description="seconds a returning director waits to catch up before it preempts anyway; 0: off")
    catchup_port: Annotated[int, Range(1, 65535)] = Field(
        default=8850, description="UDP port of havs's catch-up requests and answers (same group as the sync)")


def _key_problem(spec: str) -> str | None:
    """Why a key spec is unusable, or None: `hex:…` (32..64 bytes), `file:/absolute/path` (read by the VRRP
    child: a regular file nobody else can read), or printable ASCII text of 32..64 characters. The message
    never quotes the key (checked here rather than per field so the error carries no `got '…'`)."""
    if spec.startswith("file:"):
        return None if spec[5:].startswith("/") else "a file: key needs an absolute path"
    try:
        parse_key(spec)
    except ValueError as e:
        return str(e)
    return None


class AuthHmac(Strict):
    """keepalived 2.4 `auth_hmac`: HMAC-SHA256 trailer on every advert, with replay protection (docs/auth.md).
    The same names and meanings as keepalived's; keys are never shown (havs check prints `**********`)."""

    keys: dict[Annotated[int, Range(1, 255)], SecretStr] = Field(
        min_length=1, description="key id → hex:…, file:/path or ASCII text; 32..64 bytes")
    active_key: Annotated[int, Range(1, 255)] = Field(description="the key id our adverts are signed with")
    anti_replay: Literal["time", "monotonic"] = "time"
    time_window: Annotated[int, Range(1, 300)] | None = Field(
        default=None, description="seconds (time mode); default max(3 × advert_interval, 5)")
    mode: Literal["enforce", "permissive", "receive_only"] = "enforce"

    @field_serializer("keys")
    def _keys_out(self, keys: dict[int, SecretStr], info: SerializationInfo) -> dict[int, str]:
        """Masked everywhere (status, havs check, logs) except the daemon's hand-over to its own VRRP child,
        which asks with context {"secrets": True}."""
        reveal = isinstance(info.context, dict) and info.context.get("secrets") is True
        return {k: v.get_secret_value() if reveal else "**********" for k, v in keys.items()}

    @model_validator(mode="after")
    def _active_defined(self) -> AuthHmac:
        for kid, spec in self.keys.items():
            if (why := _key_problem(spec.get_secret_value())) is not None:
                raise Problem(("keys", kid), why)
        if self.active_key not in self.keys:
            raise Problem(("active_key",), f"key {self.active_key} is not defined in keys")
        return self


INSTANCE_NAME = r"^[A-Za-z0-9_.-]{1,32}$"


class Vrrp(Strict):
    """One VRRP instance (keepalived's `vrrp_instance`): a router id on a heartbeat interface, floating
    addresses of one family, and who is preferred. `vrrp:` in the file is one of these or a list."""

    name: Annotated[str, Field(pattern=INSTANCE_NAME)] = Field(
        default="VI_1", description="the instance's name in logs, status, metrics and sync groups")
    router_id: Annotated[int, Range(1, 255)]
    # per node: several instances need their own preferences (active/active: A prefers lvs1, B lvs2)
    priority: dict[str, Annotated[int, Range(1, 254)]] | None = Field(
        default=None, description="node name → priority 1..254; default: the node's priority")
    version: Literal[2, 3] = 3
    advert_interval: Annotated[float, Range(0.01, 40.95)] = 1.0
    preempt: bool = True
    preempt_delay: Annotated[float, Range(0, 3600)] = 0.0
    interface: str = Field(description="role name of the heartbeat interface")
    unicast_peers: list[IPAddress] = Field(default_factory=list)
    auth_pass: Annotated[str, Field(min_length=1, max_length=8)] | None = None
    v3_checksum: Literal["pseudo_header", "message"] = "pseudo_header"
    auth_hmac: AuthHmac | None = None
    addresses: list[FloatingAddress] = Field(min_length=1)
    track_interfaces: list[str] = Field(default_factory=list)
    garp: Garp = Field(default_factory=Garp)
    notify: Notify = Field(default_factory=Notify)
    connection_sync: ConnectionSync | None = None
    # keepalived's vrrp_rt_priority: the VRRP child's SCHED_RR priority (needs CAP_SYS_NICE); 0 = none (nice -10)
    rt_priority: Annotated[int, Range(0, 99)] = 1

    def priority_of(self, node_name: str, node: object) -> int:
        """This instance's base priority on a node: its own map, else the node's `priority`."""
        if self.priority is not None and node_name in self.priority:
            return self.priority[node_name]
        return int(getattr(node, "priority", 100))

    @property
    def family(self) -> int:
        return self.addresses[0].address.version

    @model_validator(mode="after")
    def _version_rules(self) -> Vrrp:
        if self.version == 2:
            if self.advert_interval != int(self.advert_interval):
                raise Problem(("advert_interval",), f"VRRPv2 adverts are whole seconds, got {self.advert_interval}")
        else:
            if self.auth_pass is not None:
                raise Problem(("auth_pass",), "VRRPv2 only (VRRPv3 has no authentication; see auth_hmac)")
            if abs(self.advert_interval * 100 - round(self.advert_interval * 100)) > 1e-6:
                raise Problem(
                    ("advert_interval",), f"VRRPv3 adverts are whole centiseconds, got {self.advert_interval}"
                )
        if self.auth_hmac is not None and self.auth_pass is not None:
            raise Problem(("auth_pass",), "auth_pass and auth_hmac are mutually exclusive (keepalived drops auth_pass)")
        seen: set[str] = set()
        for i, fa in enumerate(self.addresses):
            if fa.address.version != self.addresses[0].address.version:
                raise Problem(("addresses", i), "floating addresses of one VRRP instance must share a family")
            if str(fa.address.ip) in seen:
                raise Problem(("addresses", i), f"{fa.address.ip} is listed twice")
            seen.add(str(fa.address.ip))
        return self


class SyncGroup(Strict):
    """keepalived's `vrrp_sync_group`: instances that always share a state (one goes FAULT, BACKUP or MASTER
    and the others follow), e.g. the VIP's and the gateway's, or an IPv4 and an IPv6 instance (RFC 9568:
    one family per instance)."""

    name: Annotated[str, Field(pattern=INSTANCE_NAME)]
    instances: list[Annotated[str, Field(pattern=INSTANCE_NAME)]] = Field(min_length=2)
    notify: Notify = Field(default_factory=Notify)

    @model_validator(mode="after")
    def _distinct(self) -> SyncGroup:
        seen: set[str] = set()
        for i, name in enumerate(self.instances):
            if name in seen:
                raise Problem(("instances", i), f"{name} is listed twice")
            seen.add(name)
        return self
