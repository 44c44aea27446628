"""Reading the config file as the daemon and the CLI do: safety checks, then parse, then pick the node."""

from __future__ import annotations

import os
import socket
import stat

from havs.core.config import load_config, select_node
from havs.core.model import NodeView
from havs.errors import ConfigError, ConfigProblem


def check_permissions(path: str) -> None:
    """A config anyone can write is a config anyone can turn into root (notify commands run as root)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # load_config reports the unreadable file with its reason
    if mode & stat.S_IWOTH:
        raise ConfigError([ConfigProblem(path, None, "", f"is world-writable (mode {stat.S_IMODE(mode):04o}); "
                                         "refusing to use it: chmod o-w")])


def load_view(path: str, node: str | None) -> NodeView:
    check_permissions(path)
    return select_node(load_config(path), node, socket.gethostname(), path)
