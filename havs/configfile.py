"""Reading the config file as the daemon and the CLI do: safety checks, then parse, then pick the node.

The file is whatever the operator (or a half-finished copy, or an attacker with write access to the
directory) left at the path. Reading it must neither block nor grow without bound: it is opened with
O_NONBLOCK and checked with fstat on the descriptor it will read (a FIFO, a device or a directory is
refused before a byte is read, and a swap of the path after the check changes nothing), and at most
MAX_SIZE bytes are read. Every failure is a ConfigError naming the file.
"""

from __future__ import annotations

import os
import socket
import stat

from havs.core.config import parse_config, select_node
from havs.core.model import Config, NodeView
from havs.errors import ConfigError, ConfigProblem

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


def read_config_text(path: str) -> str:
    """The file's text, or a ConfigError saying why it cannot be used. Never blocks on a special file."""
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


def load_config(path: str) -> Config:
    """Read and validate a config file; errors name the file as given."""
    return parse_config(read_config_text(path), path)


def load_view(path: str, node: str | None) -> NodeView:
    """The effective config of this director. Raises ConfigError, and nothing else, for any bad file."""
    try:
        return select_node(load_config(path), node, socket.gethostname(), path)
    except ConfigError:
        raise
    except Exception as e:  # the loader's own catch-all covers parsing; this covers everything around it
        raise _refuse(path, f"cannot be used: {type(e).__name__}: {e}") from None
