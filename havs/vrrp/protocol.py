"""The messages between the daemon and its VRRP child: typed, versioned, one codec.

One JSON object per line over a socketpair: `{"v": VERSION, "type": <class name>, ...fields}`. Anything
that does not decode to one of `MESSAGES` raises `ProtocolError` (a type, not a text prefix); a start that
fails is a `StartFailed` message, not an error string to parse.

Version 2: several VRRP instances in the one child. `SetDecrement` carries a decrement per instance name,
`StateChange` names its instance (and sync group), and `Snapshot.data` is
`{"instances": [one dict per instance, in config order, with "instance" and "group"], "groups": {name: state}}`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

VERSION = 2


class ProtocolError(ValueError):
    """A line that is not a message of this version."""


# ---------------------------------------------------------------------------- daemon → child


@dataclass(frozen=True)
class Start:
    view: dict[str, Any]  # NodeView.model_dump(mode="json")


@dataclass(frozen=True)
class Stop:
    graceful: bool = True


@dataclass(frozen=True)
class SetDecrement:
    n: dict[str, int]  # instance name → priority decrement; a name left out: 0


@dataclass(frozen=True)
class HoldPreemption:
    reason: str  # "": preempt again


@dataclass(frozen=True)
class Update:
    id: int
    view: dict[str, Any]


# ---------------------------------------------------------------------------- child → daemon


@dataclass(frozen=True)
class Ready:
    pass


@dataclass(frozen=True)
class StartFailed:
    error: str


@dataclass(frozen=True)
class StateChange:
    instance: str
    from_: str
    to: str
    reason: str
    group: str = ""  # the instance's sync group, "" when none


@dataclass(frozen=True)
class Snapshot:
    """Pushed on every state change and every `PUSH_EVERY` seconds: also the child's heartbeat."""

    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Updated:
    id: int
    applied: bool


Message = Start | Stop | SetDecrement | HoldPreemption | Update | Ready | StartFailed | StateChange | Snapshot | Updated
MESSAGES: dict[str, type[Any]] = {c.__name__: c for c in (Start, Stop, SetDecrement, HoldPreemption, Update, Ready,
                                                         StartFailed, StateChange, Snapshot, Updated)}
_TYPES = {"bool": bool, "int": int, "str": str}


def encode(message: Message) -> bytes:
    body = {"v": VERSION, "type": type(message).__name__, **dataclasses.asdict(message)}
    return json.dumps(body, default=str, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message:
    try:
        body = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ProtocolError("not an object")
    if (version := body.pop("v", None)) != VERSION:
        raise ProtocolError(f"protocol version {version!r}, expected {VERSION}")
    cls = MESSAGES.get(str(body.pop("type", "")))
    if cls is None:
        raise ProtocolError("unknown message type")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if set(body) - set(fields):
        raise ProtocolError(f"{cls.__name__}: unknown fields {sorted(set(body) - set(fields))}")
    for name, f in fields.items():
        want = _TYPES.get(str(f.type)) or (dict if str(f.type).startswith("dict") else None)
        if name in body and want is not None and type(body[name]) is not want:
            raise ProtocolError(f"{cls.__name__}.{name}: expected {want.__name__}")
        if str(f.type) == "dict[str, int]" and name in body and any(type(v) is not int for v in body[name].values()):
            raise ProtocolError(f"{cls.__name__}.{name}: expected integer values")
    try:
        return cls(**body)  # type: ignore[no-any-return]
    except TypeError as e:
        raise ProtocolError(f"{cls.__name__}: {e}") from None
