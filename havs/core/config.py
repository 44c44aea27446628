"""YAML text → Config, with every error naming file, line and key path.

PyYAML's composer gives each node a start mark; we build plain Python data from the node tree while
recording the line of every key path, let pydantic validate, and map each pydantic error location back
to the line of the deepest path we know. Duplicate keys (which YAML silently lets the last one win) are
errors too.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from havs.core.model import (
    Config,
    Node,
    NodeView,
    Problem,
    Settings,
    SyncGroup,
    VirtualService,
    Vrrp,
    instance_problems,
)
from havs.core.semantics import semantic_problems
from havs.errors import ConfigError, ConfigProblem

Path = tuple[str | int, ...]
# libyaml's parser when PyYAML was built with it: three times faster on a 10,000-server file
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def path_str(path: Iterable[str | int]) -> str:
    """('virtual_services', 0, 'weight') → 'virtual_services[0].weight'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config, where it came from, and the line of every key path (for later problems: the
    host checks of `havs check`)."""

    config: Config
    file: str
    lines: dict[Path, int]
    single_vrrp: bool = False  # `vrrp:` was written as one mapping: paths say vrrp.x, not vrrp[0].x

    def line_of(self, path: Path) -> int | None:
        return _line_of(self.lines, path)

    def problem(self, path: Path, message: str) -> ConfigProblem:
        return ConfigProblem(self.file, self.line_of(path), _shown(path_str(path), self.single_vrrp), message)


def _shown(path: str, single_vrrp: bool) -> str:
    """The path as the operator wrote it: the one-instance form `vrrp:` has no index."""
    return "vrrp" + path[len("vrrp[0]"):] if single_vrrp and path.startswith("vrrp[0]") else path


def _indexed(path: str, single_vrrp: bool) -> str:
    """The inverse of `_shown`: vrrp.x → vrrp[0].x in a one-instance file."""
    if single_vrrp and (path == "vrrp" or path.startswith(("vrrp.", "vrrp["))) and not path.startswith("vrrp[0]"):
        return "vrrp[0]" + path[len("vrrp"):]
    return path


def _one_instance(data: dict[str, Any], lines: dict[Path, int]) -> bool:
    """`vrrp:` as one mapping (the one-instance form) → a list of one, with its lines under vrrp[0] too."""
    if not isinstance(data.get("vrrp"), dict):
        return False
    data["vrrp"] = [data["vrrp"]]
    for path, line in list(lines.items()):
        if path[:1] == ("vrrp",):
            lines.setdefault(("vrrp", 0, *path[1:]), line)
    return True


def _line_of(lines: dict[Path, int], path: Path) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        # a mapping key written as a number (`keys: {1: …}`) is a string in the file, an int in the path
        as_text = (*path[:-1], str(path[-1]))
        if as_text in lines:
            return lines[as_text]
        path = path[:-1]
    return lines.get(())


# Bounds on what a file may make the builder do: a YAML alias is a reference, so ten lines of nested
# aliases ("billion laughs") expand to 10^9 nodes; a recursive alias never ends. A real config nests about
# six levels deep and uses aliases for shared blocks (a `check:` reused by every server), well inside these.
MAX_DEPTH = 64
ALIAS_EXPANSION = 4  # built nodes may be at most this many times the nodes written, plus MIN_BUDGET
MIN_BUDGET = 100_000
# and never more than this: ~100,000 one-line real servers, ~8 s and ~350 MB to validate (10,000: 0.4 s, 33 MB)
MAX_NODES = 500_000


class _TooBig(Exception):
    """The alias expansion budget ran out (carries the line where it did)."""

    def __init__(self, line: int, path: Path) -> None:
        self.line = line
        self.path = path


def _count_nodes(root: yaml.Node) -> int:
    """Distinct nodes in the composed graph (aliases are shared references, counted once)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack += (k, v)
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    return len(seen)


class _Builder:
    """Node tree → Python data, remembering the line (1-based) of every path. Bounded: nesting depth,
    recursive aliases and the total number of nodes built (alias expansion) are limited, and a scalar
    whose tag cannot construct it (`!!int abc`) is a problem on its line, not an exception."""

    def __init__(self, file: str, budget: int) -> None:
        self.file = file
        self._scalars = yaml.SafeLoader("")  # resolves a scalar's tag: int, float, bool, null, str
        self.lines: dict[Path, int] = {}
        self.problems: list[ConfigProblem] = []
        self._budget = budget
        self._open: set[int] = set()  # ids of the collections being built: an alias to one is recursion

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        self._budget -= 1
        if self._budget < 0:
            # the top-level key's line: deeper lines are the anchors' own, wherever the expansion ran away
            raise _TooBig(self.line_of(path[:1]) or node.start_mark.line + 1, path[:1])
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._open:
            self._problem(self.line_of(path) or node.start_mark.line + 1, path,
                          f"recursive alias: the anchor on line {node.start_mark.line + 1} is used inside itself")
            return None
        if len(path) >= MAX_DEPTH:
            self._problem(node.start_mark.line + 1, path, f"nested more than {MAX_DEPTH} levels deep")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return None
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(key_node.start_mark.line + 1, path, "keys must be plain words")
                continue
            key = key_node.value
            if key == "<<":
                self._problem(key_node.start_mark.line + 1, path, "YAML merge keys (<<) are not supported")
                continue
            if key in out:
                self._problem(key_node.start_mark.line + 1, (*path, key), "duplicate key")
                continue
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, (*path, key))
        return out

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        try:
            return self._scalars.construct_object(node, deep=True)
        except Exception as e:  # PyYAML's constructors raise ValueError, KeyError, TypeError… on a bad value
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            detail = e.problem if isinstance(e, yaml.MarkedYAMLError) and e.problem else None
            message = f"{node.value!r} is not a valid {tag}" + (f" ({detail})" if detail else "")
            self._problem(node.start_mark.line + 1, path, message)
            return None

    def _problem(self, line: int, path: Path, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, line, path_str(path), message))

    def line_of(self, path: Path) -> int | None:
        return _line_of(self.lines, path)


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    # An address field is a union of IPv4 and IPv6: one message for both branches.
    msg = re.sub(r"^Input is not a valid IPv[46] (address|interface)$", r"not a valid IP \1", msg)
    if kind in ("int_parsing", "int_type", "float_parsing", "float_type", "bool_parsing", "bool_type"):
        msg = {"int": "must be a whole number", "flo": "must be a number", "boo": "must be true or false"}[
            kind[:3]
        ]
    if (
        "input" in err
        and not isinstance(err["input"], dict | list)
        and not re.search(rf"(?<![\w.]){re.escape(repr(err['input']))}(?![\w.])", msg)
        and kind not in ("model_type", "dict_type", "list_type")
    ):
        msg += f", got {err['input']!r}"
    return msg


def _clean_loc(loc: tuple[Any, ...]) -> Path:
    """pydantic puts union branch names and validator tags into locations; keep only real keys."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, int):
            out.append(part)
        elif isinstance(part, str) and (
            part.startswith(("function-", "constrained-", "literal[", "IPv4", "IPv6", "lax-", "json-"))
            or part in ("int", "str", "float", "bool", "none", "list[...]", "dict[str,str]")
            or "[" in part
        ):
            continue
        else:
            out.append(part)
    return tuple(out)


def parse_config(text: str, file: str = "<config>") -> Config:
    """Parse and validate; raise ConfigError listing every problem with file:line: path: message.
    Nothing else escapes: whatever a parser or validator raises on hostile input is a ConfigError too."""
    return parse_located(text, file).config


def parse_located(text: str, file: str = "<config>") -> LoadedConfig:
    """parse_config, keeping the line of every key path."""
    try:
        return _parse(text, file)
    except ConfigError:
        raise
    except Exception as e:  # RecursionError, MemoryError, a library bug: a rejected file, never a crash
        raise ConfigError([ConfigProblem(file, None, "", f"cannot be parsed: {type(e).__name__}: {e}")]) from None


def _parse(text: str, file: str) -> LoadedConfig:
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError([ConfigProblem(file, line, "", f"YAML syntax: {e.problem or e}")]) from None
    except yaml.YAMLError as e:
        raise ConfigError([ConfigProblem(file, None, "", f"YAML: {e}")]) from None
    if root is None:
        raise ConfigError([ConfigProblem(file, 1, "", "the file is empty")])
    written = _count_nodes(root)
    if written > MAX_NODES:
        raise ConfigError([ConfigProblem(file, None, "",
                                         f"has {written} values; a config may have at most {MAX_NODES}")])
    builder = _Builder(file, min(ALIAS_EXPANSION * written + MIN_BUDGET, MAX_NODES))
    try:
        data = builder.build(root, ())
    except _TooBig as e:
        raise ConfigError([ConfigProblem(
            file, e.line, path_str(e.path),
            "YAML aliases expand to too many nodes (an alias bomb?); write the values out")]) from None
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(file, 1, "", "the top level must be a mapping of keys")])
    _default_checks(data)
    _merge_real_server_checks(data)
    single = _one_instance(data, builder.lines)
    problems = list(builder.problems)
    # a value the builder already rejected needs no second message (its path as validation will say it)
    said = {_indexed(p.path, single) for p in problems}
    try:
        config: Config | None = Config.model_validate(data)
    except ValidationError as e:
        problems += _located(e, (), builder, said)
        config = None
    said |= {p.path for p in problems}
    if config is not None:
        parts = _parts(config)
    elif written <= PARTIAL_MAX_NODES:
        parts = _valid_parts(data)
    else:  # a huge file that failed: its schema errors now, not a second validation's worth of waiting
        parts = (None, {}, [], [], [])
    found = semantic_problems(*parts)
    if config is None:  # across instances: the model named the first problem it met, if it got that far
        found += instance_problems(parts[1], parts[2], parts[4], node_names=_declared(data.get("nodes")),
                                   instance_names=_declared(data.get("vrrp")))
    for path, message in found:
        if not any(path_str(path[:n]) in said for n in range(1, len(path) + 1)):
            problems.append(ConfigProblem(file, builder.line_of(path), path_str(path), message))
    if problems or config is None:
        problems = [ConfigProblem(p.file, p.line, _shown(p.path, single), p.message) for p in problems]
        problems.sort(key=lambda p: (p.line or 0, p.path))
        raise ConfigError(_dedupe(problems))
    return LoadedConfig(config, file, builder.lines, single)


def _located(e: ValidationError, prefix: Path, builder: _Builder, said: set[str]) -> list[ConfigProblem]:
    out = []
    for err in e.errors(include_url=False):
        loc = (*prefix, *_clean_loc(tuple(err["loc"])))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, Problem):
            loc = (*loc, *cause.where)
        if path_str(loc) in said:
            continue
        out.append(ConfigProblem(builder.file, builder.line_of(loc), path_str(loc), _message(dict(err))))
    return out


Parts = tuple[Settings | None, dict[str, Node], list[tuple[int, Vrrp]], list[tuple[int, VirtualService]],
              list[tuple[int, SyncGroup]]]


PARTIAL_ROUNDS = 4
PARTIAL_MAX_NODES = 50_000  # ~15,000 real servers: re-validating the valid parts costs at most ~1 s more


def _drop(data: Any, loc: Path, missing: bool) -> bool:
    """Delete the deepest mapping key on `loc` (for a missing key: the one above it); True if one was."""
    holder: tuple[dict[str, Any], str] | None = None
    node = data
    for part in loc[:-1] if missing else loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            holder = (node, part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break
    if holder is None:
        return False
    del holder[0][holder[1]]
    return True


def _declared(raw: Any) -> set[str]:
    """The node names (a mapping) or instance names (a list of mappings; VI_1 by default) a file declares,
    valid or not."""
    if isinstance(raw, dict):
        return {str(k) for k in raw}
    if isinstance(raw, list):
        return {str(x.get("name", "VI_1")) for x in raw if isinstance(x, dict)}
    return set()


def _parts(config: Config) -> Parts:
    return (config.settings, dict(config.nodes), list(enumerate(config.vrrp)),
            list(enumerate(config.virtual_services)), list(enumerate(config.vrrp_sync_groups)))


def _valid_parts(data: dict[str, Any]) -> Parts:
    """The sections of a file that failed validation which are valid on their own: their meaning is still
    checked, so one run reports every problem."""

    def valid(model: type[Any], value: Any) -> Any:
        # Drop each key that failed (its default stands in) and try again: a typo in one key must not hide
        # what the rest of the section means. List items are never dropped, so indexes stay the file's.
        value = copy.deepcopy(value)
        for _ in range(PARTIAL_ROUNDS):
            try:
                return model.model_validate(value)
            except ValidationError as e:
                if not any(_drop(value, _clean_loc(tuple(err["loc"])), err.get("type") == "missing")
                           for err in e.errors(include_url=False)):
                    return None
        return None

    settings = valid(Settings, data.get("settings") if data.get("settings") is not None else {})
    raw_nodes = data.get("nodes")
    nodes = {k: n for k, v in raw_nodes.items() if (n := valid(Node, v)) is not None} \
        if isinstance(raw_nodes, dict) else {}
    raw_vrrp = data.get("vrrp")
    vrrp = [(i, v) for i, x in enumerate(raw_vrrp) if (v := valid(Vrrp, x)) is not None] \
        if isinstance(raw_vrrp, list) else []
    raw_services = data.get("virtual_services")
    services = [(i, vs) for i, v in enumerate(raw_services) if (vs := valid(VirtualService, v)) is not None] \
        if isinstance(raw_services, list) else []
    raw_groups = data.get("vrrp_sync_groups")
    groups = [(i, g) for i, x in enumerate(raw_groups) if (g := valid(SyncGroup, x)) is not None] \
        if isinstance(raw_groups, list) else []
    return settings, nodes, vrrp, services, groups


def _dedupe(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    seen: set[tuple[int | None, str, str]] = set()
    out = []
    for p in problems:
        key = (p.line, p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# A TCP connect is no check of a UDP or SCTP server (it fails on a healthy one, or passes on the wrong
# socket), and a fwmark service has no port to connect to: without an explicit `check:` their real servers
# are not probed (keepalived's real_server without a checker); docs/config.md says so.
UNPROBED = {"type": "none"}


def _default_checks(data: dict[str, Any]) -> None:
    services = data.get("virtual_services")
    if not isinstance(services, list):
        return
    for vs in services:
        if isinstance(vs, dict) and "check" not in vs and (
                vs.get("protocol") in ("udp", "sctp") or vs.get("fwmark") is not None):
            vs["check"] = dict(UNPROBED)


def _merge_real_server_checks(data: dict[str, Any]) -> None:
    """A real server's `check:` overrides its service's check key by key: merge before validation so
    the merged check is validated as a whole (a real server's timeout against the service's interval)."""
    services = data.get("virtual_services")
    if not isinstance(services, list):
        return
    for vs in services:
        if not isinstance(vs, dict) or not isinstance(vs.get("real_servers"), list):
            continue
        base = vs.get("check") if isinstance(vs.get("check"), dict) else {}
        for rs in vs["real_servers"]:
            if isinstance(rs, dict) and isinstance(rs.get("check"), dict):
                rs["check"] = {**base, **rs["check"]}


def select_node(config: Config, name: str | None, hostname: str, file: str = "<config>") -> NodeView:
    """The node named on the command line, else the one whose key or `hostname` matches this host."""
    if name is not None:
        if name not in config.nodes:
            known = ", ".join(sorted(config.nodes))
            raise ConfigError([ConfigProblem(file, None, "nodes", f"no node named {name!r} (nodes: {known})")])
        return NodeView(name=name, node=config.nodes[name], config=config)
    for key, node in config.nodes.items():
        if hostname in (key, node.hostname) or hostname.split(".")[0] in (key, node.hostname):
            return NodeView(name=key, node=node, config=config)
    known = ", ".join(sorted(config.nodes))
    raise ConfigError(
        [ConfigProblem(file, None, "nodes", f"this host ({hostname}) is none of the nodes ({known}); use --node")]
    )
