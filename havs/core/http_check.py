"""An HTTP(S) check without I/O: the target with its request prepared once (`HttpProbe`), the verdict on a
complete answer (status, body, agent weight), and the reason a failed connect or exchange is given.
The sockets, TLS and the response parser are the edge's (havs.edge.probe)."""

from __future__ import annotations

import errno
import re
from collections.abc import Container, Mapping

from havs.core.health import ProbeResult

DEFAULT_AGENT_HEADER = "X-Havs-Weight"
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
# this director's own shortage, not the server's fault: the check is inconclusive
_LOCAL = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class HttpProbe:
    """One HTTP(S) target with its request prepared. Immutable by convention; build once, probe often.
    The edge's `HttpProbe` (havs.edge.probe) adds the address family it connects with.

    `ok_status`: the codes that count as healthy (any container: a frozenset, a range).
    `agent_header`: response header carrying the server's own weight (`50%`); None = the default name,
    "" = ignore agent weights.
    `tag`: part of the keep-alive key, so two owners probing the same address keep separate connections.
    """

    __slots__ = (
        "address", "agent_header", "body_re", "head", "key", "max_body", "ok_status", "port",
        "request", "server_hostname", "source_address", "timeout", "tls", "verify_tls",
    )

    def __init__(
        self,
        address: str,
        port: int,
        *,
        timeout: float = 1.0,
        tls: bool = False,
        method: str = "GET",
        path: str = "/",
        host: str | None = None,
        ok_status: Container[int] = range(200, 400),
        expect_body: str | re.Pattern[str] | None = None,
        max_body: int = 64 * 1024,
        verify_tls: bool = False,
        sni: str | None = None,
        agent_header: str | None = None,
        source_address: str | None = None,
        tag: object = None,
    ) -> None:
        self.address = str(address)
        self.port = port
        self.timeout = timeout
        self.tls = tls
        self.head = method == "HEAD"
        self.ok_status = ok_status
        self.body_re = re.compile(expect_body) if isinstance(expect_body, str) else expect_body
        self.max_body = max_body
        self.verify_tls = verify_tls
        self.source_address = str(source_address) if source_address else None
        self.agent_header = DEFAULT_AGENT_HEADER if agent_header is None else agent_header
        if host is None:
            bare = f"[{self.address}]" if ":" in self.address else self.address
            host = bare if port == (443 if tls else 80) else f"{bare}:{port}"
        # SNI carries names only; with an IP literal Python sends none but still checks the IP SAN
        self.server_hostname = sni or hostname(host)
        self.request = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: havs-check\r\n"
            "Accept-Encoding: identity\r\nConnection: keep-alive\r\n\r\n"
        ).encode("latin-1")
        # everything that must match for a kept-alive connection to be reused
        self.key = (self.address, port, tls, verify_tls, self.server_hostname, self.source_address, self.head,
                    tag)

    def __repr__(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"HttpProbe({scheme}://{self.address}:{self.port})"


def hostname(host: str) -> str:
    """The name part of a Host header value: example.com:8080 → example.com, [::1]:80 → ::1."""
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def os_reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return "unreachable"
    if isinstance(exc, OSError) and exc.errno in _LOCAL:
        return f"local: {(exc.strerror or str(exc)).lower()}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.strerror:
        return f"error: {exc.strerror.lower()}"
    return f"error: {exc!r}"


def failed(reason: str | None, latency: float) -> ProbeResult:
    reason = reason or "error"
    return ProbeResult(False, reason, latency, inconclusive=reason.startswith("local: "))


def judge(probe: HttpProbe, code: int, headers: Mapping[str, str], body: bytes | bytearray,
          latency: float) -> ProbeResult:
    """A complete answer: healthy if its status is one of ok_status and its body matches; the agent weight
    from its header."""
    if code not in probe.ok_status:
        return ProbeResult(False, f"status {code}", latency)
    if probe.body_re is not None and probe.body_re.search(body.decode("utf-8", "replace")) is None:
        return ProbeResult(False, "body mismatch", latency)
    agent = None
    if probe.agent_header:
        value = headers.get(probe.agent_header)
        if value is not None:
            agent = parse_agent_weight(value)
    return ProbeResult(True, "ok", latency, agent)


def parse_agent_weight(value: str) -> float | None:
    """`50%` → 0.5; a bare number is a percentage too; `drain` → 0; anything else is ignored (None)."""
    text = value.strip().lower()
    if text == "drain":
        return 0.0
    try:
        number = float(text.removesuffix("%"))
    except ValueError:
        return None
    if number != number:  # NaN
        return None
    return min(max(number / 100.0, 0.0), 1.0)
