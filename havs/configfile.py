"""Reading the config file as the daemon and the CLI do: safety checks, then parse, then pick the node.

The file is whatever the operator (or a half-finished copy, or an attacker with write access to the
directory) left at the path. Reading it must neither block nor grow without bound: it is opened with
O_NONBLOCK and checked with fstat on the descriptor it will read (a FIFO, a device or a directory is
refused before a byte is read, and a swap of the path after the check changes nothing), and at most
MAX_SIZE bytes are read. A file in a directory others can write to is refused like a world-writable
file: whoever can replace the file chooses the commands the daemon runs as root. Every failure is a
ConfigError naming the file.

`havs check` adds what only the director itself can say (`host_problems`): the interfaces exist, the notify
commands exist and are executable, `vrrp.auth_hmac`'s `file:` keys can be read and nobody else can read
them. `--offline` skips them (checking a file on a build machine).
"""

from __future__ import annotations

import os
import socket
import stat

from havs.core.config import LoadedConfig, parse_located, select_node
from havs.core.model import Config, NodeView
from havs.core.semantics import socket_collision
from havs.errors import ConfigError, ConfigProblem
from havs.vrrp.auth_keys import read_key

MAX_SIZE = 4 * 1024 * 1024  # the seed's file is 3 KB; 10,000 real servers written out are ~0.5 MB; 4 MiB of
# one-line servers (~100,000) take ~8 s and ~350 MB to validate: the most a director should spend on a file


def _refuse(path: str, message: str) -> ConfigError:
    return ConfigError([ConfigProblem(path, None, "", message)])


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _directory_problem(path: str) -> str | None:
    """Why the file's directory lets others replace the file, or None. A sticky directory (/tmp) is safe:
    only the file's owner may rename or delete it there."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(directory).st_mode
    except OSError:
        return None  # the open below names the real problem
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        who = "world" if mode & stat.S_IWOTH else "group"
        return (f"is in {directory}, which is {who}-writable (mode {stat.S_IMODE(mode):04o}): anyone who can write "
                f"there can replace the config; refusing to use it: chmod go-w {directory}")
    return None


def read_config_text(path: str) -> str:
    """The file's text, or a ConfigError saying why it cannot be used. Never blocks on a special file."""
    if (why := _directory_problem(path)) is not None:
        raise _refuse(path, why)
    try:
        # stat first: opening some devices has effects (a tape rewinds); the fstat below is the real check
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _refuse(path, f"is {_kind(mode)}, not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise _refuse(path, f"cannot read: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(path, f"is {_kind(info.st_mode)}, not a regular file")
        if info.st_mode & stat.S_IWOTH:
            # a config anyone can write is a config anyone can turn into root (notify commands run as root)
            raise _refuse(path, f"is world-writable (mode {stat.S_IMODE(info.st_mode):04o}); refusing to use it: "
                                "chmod o-w")
        if info.st_size > MAX_SIZE:
            raise _refuse(path, f"is {info.st_size} bytes; a config may be at most {MAX_SIZE} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:  # st_size can lie (a file still growing, /proc): read to EOF, never past the cap
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_SIZE:
                raise _refuse(path, f"is more than {MAX_SIZE} bytes; a config may be at most {MAX_SIZE} bytes")
            chunks.append(chunk)
    except OSError as e:
        raise _refuse(path, f"cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise _refuse(path, f"not UTF-8 text: {e.reason} at byte {e.start}") from None


def load_located(path: str) -> LoadedConfig:
    """Read and validate a config file, keeping key lines; errors name the file as given."""
    loaded = parse_located(read_config_text(path), path)
    sock = loaded.config.settings.control_socket
    if (why := socket_collision(sock, os.path.abspath(path))) is not None:
        raise ConfigError([loaded.problem(("settings", "control_socket"), why)])
    return loaded


def load_config(path: str) -> Config:
    """Read and validate a config file; errors name the file as given."""
    return load_located(path).config


def load_view(path: str, node: str | None, *, host_checks: bool = False) -> NodeView:
    """The effective config of this director. Raises ConfigError, and nothing else, for any bad file.
    host_checks: also what only this host can say (`host_problems`), as `havs check` does, when the node is
    this host (chosen by hostname, or `--node` naming this host): checking lvs2's file on lvs1 says nothing
    about lvs2's interfaces."""
    try:
        loaded = load_located(path)
        hostname = socket.gethostname()
        view = select_node(loaded.config, node, hostname, path)
        this_host = node is None or _node_of_host(loaded.config, hostname) == view.name
        if host_checks and this_host and (problems := host_problems(loaded, view)):
            raise ConfigError(problems)
        return view
    except ConfigError:
        raise
    except Exception as e:  # the loader's own catch-all covers parsing; this covers everything around it
        raise _refuse(path, f"cannot be used: {type(e).__name__}: {e}") from None


def _node_of_host(config: Config, hostname: str) -> str | None:
    try:
        return select_node(config, None, hostname).name
    except ConfigError:
        return None


def host_problems(loaded: LoadedConfig, view: NodeView) -> list[ConfigProblem]:
    """What this director cannot run: interfaces of its node that do not exist here, notify commands that
    are missing or not executable, `file:` keys it cannot use (missing, unreadable, world-readable, not a key).
    Every one, with its line."""
    problems = []
    for role, ifname in view.node.interfaces.items():
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            problems.append(loaded.problem(("nodes", view.name, "interfaces", role),
                                           f"interface {ifname} does not exist on this host ({socket.gethostname()})"))
    hooks = [(("vrrp", i), v.notify) for i, v in enumerate(view.config.vrrp)]
    hooks += [(("vrrp_sync_groups", i), g.notify) for i, g in enumerate(view.config.vrrp_sync_groups)]
    for base, notify in hooks:
        for hook in ("master", "backup", "fault", "stop"):
            argv = getattr(notify, hook)
            if not argv or not argv[0].startswith("/"):
                continue  # an empty or relative command is already an error of the file
            where = (*base, "notify", hook, 0)
            if not os.path.exists(argv[0]):
                problems.append(loaded.problem(where, f"{argv[0]} does not exist on this host"))
            elif not os.path.isfile(argv[0]) or not os.access(argv[0], os.X_OK):
                problems.append(loaded.problem(where, f"{argv[0]} is not an executable file"))
    # file: keys are read where the VRRP process reads them, with the same rules (a missing, unreadable or
    # world-readable file keeps VRRP from starting); the message names the file, never the key
    for i, v in enumerate(view.config.vrrp):
        for kid, spec in (v.auth_hmac.keys.items() if v.auth_hmac else ()):
            if spec.get_secret_value().startswith("file:"):
                try:
                    read_key(spec.get_secret_value())
                except ValueError as e:
                    # the line is the key's own (YAML keys are text); the path names it as the parser's do
                    at = ("vrrp", i, "auth_hmac", "keys")
                    problems.append(ConfigProblem(loaded.file, loaded.line_of((*at, str(kid))),
                                                  loaded.problem((*at, kid), "").path, str(e)))
    return problems
