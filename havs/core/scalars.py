"""No silent coercion of config scalars: YAML's types are what the operator wrote, so they are kept strict.

pydantic's lax mode turns `priority: true` into 1, `address: 1` into 0.0.0.1 and `port: "80"` into 80. Each
is a mistake in a config file (a bool where a number belongs, an address YAML read as an integer because it
had no dots, a quoted number), so each is an error naming the key. Floats written as whole numbers (`5`
for a float key, `5.0` for an int key) stay accepted: YAML readers write both.
"""

from __future__ import annotations

import contextlib
import ipaddress
import types
import typing
from typing import Any

_IP = (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Interface, ipaddress.IPv6Interface)
_SCALAR = {bool: "bool", int: "int", float: "float", str: "str", type(None): "none"}
_kinds_cache: dict[Any, frozenset[str]] = {}


def kinds(annotation: Any) -> frozenset[str]:
    """What a field accepts, in scalar words: bool, int, float, str, ip, none, list, other."""
    try:
        cached = _kinds_cache.get(annotation)
    except TypeError:  # an unhashable annotation: work it out each time
        cached = None
    if cached is not None:
        return cached
    found = frozenset(_kinds(annotation))
    with contextlib.suppress(TypeError):
        _kinds_cache[annotation] = found
    return found


def _kinds(annotation: Any) -> set[str]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(arg) for arg in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {_SCALAR.get(type(value), "other") for value in typing.get_args(annotation)}
    if origin is list:
        return {"list"}
    if annotation in _SCALAR:
        return {_SCALAR[annotation]}
    if annotation in _IP:
        return {"ip"}
    return {"other"}


def item_type(annotation: Any) -> Any | None:
    """X of list[X] (through Optional/Annotated), or None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return item_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = item_type(arg)
            if found is not None:
                return found
        return None
    if origin is list:
        return typing.get_args(annotation)[0]
    return None


def strict_message(annotation: Any, value: Any) -> str | None:
    """Why `value` is the wrong YAML type for a field of this annotation, or None if pydantic may have it."""
    if isinstance(value, str):
        accepts = kinds(annotation)
        if "str" in accepts or "ip" in accepts or not accepts & {"int", "float"}:
            return None
        number = "must be a whole number" if "float" not in accepts else "must be a number"
        try:
            float(value)
        except ValueError:
            return number
        return f"{number}, not a quoted string"
    if isinstance(value, bool):
        accepts = kinds(annotation)
        if "bool" in accepts or not accepts & {"int", "float", "ip"}:
            return None
        if accepts & {"int", "float"}:
            return ("must be a whole number" if "float" not in accepts else "must be a number") + \
                ", not true or false"
        return "must be an address, not true or false"
    if isinstance(value, int | float):
        accepts = kinds(annotation)
        if "ip" in accepts and not accepts & {"int", "float"}:
            return f"must be an address written with dots or colons (e.g. '192.168.0.1'); YAML read {value!r} " \
                   "as a number"
    return None
