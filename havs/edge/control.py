"""The local control socket: one JSON request per connection, one JSON reply.

A Unix stream socket, mode 0600 in a 0700 directory: only root talks to the daemon. Requests are
`{"command": "status"}`, `{"command": "drain", "server": "192.168.72.128:80", "service": "..."}`, …;
the daemon supplies the handler. Bad requests get `{"ok": false, "error": "..."}`, never a crash.

Root is trusted, but a buggy or hostile client must not take the daemon with it: connections are
bounded in number (the next one gets a "busy" reply and is closed at once; ~20,000 idle ones used to
exhaust the daemon's descriptors and fail its health checks), each has a deadline for its whole request
and for its reply, and a request is bounded in size and in JSON nesting. The path is ours only if we made
it: at start an existing path is removed only when it is a socket nobody listens on (a crashed run's),
and stop() removes the socket only if it is still the one this server bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024
MAX_CONNECTIONS = 64
TIMEOUT = 5.0  # seconds for a whole request to arrive, and again for the reply to be taken
MAX_DEPTH = 16  # the daemon's requests are flat objects
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL


class ControlPathInUse(OSError):
    """The control socket path is taken: a live daemon listens there, or it is not a socket at all."""


def _nesting(raw: bytes) -> int:
    """The deepest [ / { nesting of a JSON text, counted without parsing it (json recurses per level)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _listening(path: str) -> bool:
    """Whether some process accepts connections on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as e:
            # EAGAIN: a full backlog is a live listener too
            return e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ETIMEDOUT)
        except TimeoutError:
            return True
    return True


class ControlServer:
    def __init__(self, path: str, handler: Handler, *, max_connections: int = MAX_CONNECTIONS,
                 timeout: float = TIMEOUT, max_request: int = MAX_REQUEST, max_depth: int = MAX_DEPTH) -> None:
        self.path = path
        self.handler = handler
        self.max_connections = max_connections
        self.timeout = timeout
        self.max_request = max_request
        self.max_depth = max_depth
        self.active = 0  # connections being served now
        self.refused: dict[str, int] = {}  # reason → count: busy, timeout, too_large, too_deep, bad_json, …
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we bound

    def _check_path(self) -> None:
        """Refuse a path we must not use; remove a stale socket of a dead daemon."""
        if not os.path.isabs(self.path):
            raise ControlPathInUse(f"{self.path}: the control socket path must be absolute")
        if len(os.fsencode(self.path)) > _SUN_PATH_MAX:
            raise ControlPathInUse(f"{self.path}: longer than the {_SUN_PATH_MAX} bytes a Unix socket path may have")
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            # only a directory we create gets 0700; an existing one (/run) keeps its mode
            os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlPathInUse(f"{self.path}: exists and is not a socket; refusing to replace it "
                                   "(set settings.control_socket to another path, or remove the file)")
        if _listening(self.path):
            raise ControlPathInUse(f"{self.path}: another process is listening on this control socket "
                                   "(is a second havs running on this node?)")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket from a crashed run

    async def start(self) -> None:
        self._check_path()
        old = os.umask(0o077)  # the socket is created 0600: no window where others could connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path, limit=self.max_request)
        finally:
            os.umask(old)
        st = os.lstat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._inode is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:  # another daemon's socket is not ours to delete
                    os.unlink(self.path)
            self._inode = None

    def _refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.max_connections:
            self._refuse("busy")
            await self._reply(writer, {"ok": False, "error": f"busy: {self.active} control connections are open "
                                                             f"(at most {self.max_connections}); try again"})
            return
        self.active += 1
        try:
            await self._reply(writer, await self._answer(reader))
        finally:
            self.active -= 1

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\n"), self.timeout)
        except TimeoutError:
            self._refuse("timeout")
            return {"ok": False, "error": f"bad request: no complete request line within {self.timeout:g} s"}
        except asyncio.LimitOverrunError:
            self._refuse("too_large")
            return {"ok": False, "error": f"bad request: larger than {self.max_request} bytes"}
        except asyncio.IncompleteReadError as e:
            self._refuse("incomplete")
            return {"ok": False, "error": f"bad request: the connection ended after {len(e.partial)} bytes, "
                                          "before a complete line"}
        except OSError as e:
            self._refuse("error")
            return {"ok": False, "error": f"bad request: {e}"}
        if len(raw) > self.max_request:
            self._refuse("too_large")
            return {"ok": False, "error": f"bad request: larger than {self.max_request} bytes"}
        if _nesting(raw) > self.max_depth:
            self._refuse("too_deep")
            return {"ok": False, "error": f"bad request: JSON nested deeper than {self.max_depth} levels"}
        try:
            request = json.loads(raw)
        except (ValueError, RecursionError) as e:
            self._refuse("bad_json")
            return {"ok": False, "error": f"bad request: not JSON: {e}"}
        if not isinstance(request, dict):
            self._refuse("bad_json")
            return {"ok": False, "error": "bad request: a request is a JSON object"}
        try:
            return await self.handler(request)
        except Exception as e:  # a handler bug answers this request; the server and the daemon go on
            self._refuse("handler_error")
            return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        try:
            try:
                data = json.dumps(reply, default=str).encode() + b"\n"
            except (TypeError, ValueError, RecursionError) as e:
                data = json.dumps({"ok": False, "error": f"internal error: reply not serialisable: {e}"}).encode()
                data += b"\n"
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.timeout)  # a client that never reads loses its reply
        except (OSError, TimeoutError):
            pass  # the client went away or stopped reading
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.timeout)


def request(path: str, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """The client side (blocking, for the CLI)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        # the daemon may answer without reading (busy): its reply is already in our buffer
        with contextlib.suppress(BrokenPipeError):
            s.sendall(json.dumps(message).encode() + b"\n")
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    reply = json.loads(b"".join(chunks))
    if not isinstance(reply, dict):
        raise ValueError("the daemon's reply is not a JSON object")
    return reply
