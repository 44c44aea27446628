"""Reading HTTP/1.x responses, shared by both probe edges: the transport probe (edge/probe.py, HTTPS) and
the raw-socket checker (edge/checker.py, plain HTTP and TCP). One reader, so both judge a response alike.

Responses are parsed by aiohttp's `HttpResponseParser` (the Cython wrapper around llhttp, the parser
Node.js uses). It handles what a hand parser gets wrong — chunked bodies, read-until-close bodies, HEAD,
1xx, obsolete line folding, lenient servers — in C, for a few µs. It is the one part of aiohttp that beats
hand-written code here; if aiohttp runs without its C extensions the same class is its pure-Python parser,
slower but correct (`C_PARSER` says which one is in use). It is aiohttp's internal API, so pyproject.toml
pins the tested range (3.14.x): under 3.9.5, 3.12.15 and 3.13.0 the probe tests fail (their StreamReader
reads protocol attributes this reader does not have, and a kept-alive HEAD exchange is misparsed).
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import types
from typing import Any

from havs.core import http_check


def _import_parser() -> Any:
    """aiohttp's response parser without the rest of aiohttp: the package's __init__ imports the whole
    client (sessions, cookies, websockets, multipart), ~10 MB of RSS the daemon never uses. The package is
    stood in for while the parser's modules load, then taken out with them (the parser class lives on
    here), so a later `import aiohttp` (a benchmark, a test) loads the real package whole and consistent."""
    if "aiohttp" in sys.modules:
        from aiohttp.http_parser import HttpResponseParser as parser
        return parser
    spec = importlib.util.find_spec("aiohttp")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("aiohttp is not installed")
    stand_in = types.ModuleType("aiohttp")
    stand_in.__path__ = list(spec.submodule_search_locations)
    stand_in.__spec__ = spec
    sys.modules["aiohttp"] = stand_in
    try:
        from aiohttp.http_parser import HttpResponseParser as parser
    finally:
        for name in [m for m in sys.modules if m == "aiohttp" or m.startswith("aiohttp.")]:
            del sys.modules[name]
    return parser


HttpResponseParser = _import_parser()

C_PARSER = HttpResponseParser.__module__ == "aiohttp._http_parser"
_PARSER_LIMIT = 2**16
# interim (1xx) responses read before the final one: a real server sends one (100 Continue, 103 Early Hints);
# a hostile one streams them forever, which would keep the parser busy until the check's timeout
MAX_INTERIM = 8

class HttpProbe(http_check.HttpProbe):
    """One HTTP(S) target with its request prepared (havs.core.http_check), and the socket family it
    connects with. Immutable by convention; build once, probe often."""

    __slots__ = ("family",)

    def __init__(self, address: str, port: int, **options: Any) -> None:
        super().__init__(address, port, **options)
        self.family = socket.AF_INET6 if ":" in self.address else socket.AF_INET


class ResponseReader:
    """One HTTP/1.x response at a time, read from bytes as they come (llhttp, through aiohttp's parser),
    for the transport probe here and the raw-socket checker (edge/checker.py) alike. `feed(data)` and
    `feed_eof()` say True once the response is complete (`code`, `headers`, `body`: at most `max_body`
    bytes of it), a failure reason when it cannot be, None while more is needed. `reusable`: the
    connection may carry the next check (complete, not capped, no `Connection: close`)."""

    __slots__ = ("body", "interim", "max_body", "msg", "parser", "payload", "reusable")

    def __init__(self, loop: asyncio.AbstractEventLoop, head: bool, max_body: int) -> None:
        self.parser = HttpResponseParser(
            self, loop, _PARSER_LIMIT, response_with_body=not head, read_until_eof=True, auto_decompress=False
        )
        self.max_body = max_body
        self.body = bytearray()
        self.msg: Any = None
        self.payload: Any = None
        self.interim = 0
        self.reusable = True

    def reset(self) -> None:
        """Ready for the next response on the same connection."""
        self.msg = self.payload = None
        self.body.clear()
        self.interim = 0

    @property
    def code(self) -> int:
        return int(self.msg.code)

    @property
    def headers(self) -> Any:
        return self.msg.headers

    def feed(self, data: bytes) -> bool | str | None:
        try:
            messages, _upgraded, _tail = self.parser.feed_data(data)
        except Exception:  # any parse error: the peer does not speak HTTP/1.x
            self.reusable = False
            return "garbage"
        for msg, payload in messages:
            if msg.code >= 200:
                self.msg, self.payload = msg, payload
            else:  # an interim 1xx response: skipped, but only so many
                self.interim += 1
                if self.interim > MAX_INTERIM:
                    self.reusable = False
                    return f"garbage: more than {MAX_INTERIM} interim (1xx) responses"
        return self._drain()

    def feed_eof(self) -> bool | str:
        """The server closed: completes a read-until-close body; anything shorter is `closed`."""
        self.reusable = False
        if self.payload is None:
            return "closed"
        try:
            self.parser.feed_eof()
        except Exception:
            return "closed"
        return self._drain() or "closed"

    def _drain(self) -> bool | None:
        payload = self.payload
        if payload is None:
            return None
        chunk = payload.read_nowait(-1)
        if chunk:
            room = self.max_body - len(self.body)
            if len(chunk) >= room:
                self.body += chunk[:room]
                if not payload.is_eof() or len(chunk) > room:
                    # the cap is reached before the end: judge the prefix, drop the rest with the connection
                    self.reusable = False
                    return True
            else:
                self.body += chunk
        if payload.is_eof():
            if self.msg.should_close:
                self.reusable = False
            return True
        return None

    # aiohttp's StreamReader asks its protocol for flow control; bodies are drained synchronously: no-ops
    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass
