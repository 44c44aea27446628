"""Reading `vrrp.auth_hmac` keys for the VRRP child: `hex:…`, ASCII text, or `file:/path`.

A key file must be a regular file nobody else can read; every error names the key id and says what to do,
never the key.
"""

from __future__ import annotations

import os
import stat

from havs.core.model import AuthHmac
from havs.core.vrrp_auth import AuthParams, default_window, parse_key


def read_key(spec: str) -> bytes:
    """A key spec → bytes; `file:/path` reads the file, which must be a regular file nobody else can read
    (it holds the same `hex:` line or raw ASCII key). ValueError with a clear message otherwise."""
    if not spec.startswith("file:"):
        return parse_key(spec)
    path = spec[5:]
    if not os.path.isabs(path):
        raise ValueError(f"file: key path must be absolute, got {path!r}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if info.st_mode & stat.S_IROTH:
            raise ValueError(f"{path} is world-readable (mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}")
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: a key file holds hex:… or ASCII text") from None
    try:
        return parse_key(text)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def auth_params(cfg: AuthHmac | None, advert_interval: float) -> AuthParams | None:
    """The core's AuthParams from the config (keys read now). ValueError naming `vrrp.auth_hmac.keys.N`."""
    if cfg is None:
        return None
    keys: dict[int, bytes] = {}
    for kid, spec in cfg.keys.items():
        try:
            keys[kid] = read_key(spec.get_secret_value())
        except ValueError as e:
            raise ValueError(f"vrrp.auth_hmac.keys.{kid}: {e}") from None
    window = cfg.time_window if cfg.time_window is not None else default_window(advert_interval)
    return AuthParams(keys=keys, active_key=cfg.active_key, anti_replay=cfg.anti_replay, time_window=window,
                      mode=cfg.mode)
