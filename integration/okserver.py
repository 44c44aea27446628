"""The load side of the health-check benchmarks: keep-alive HTTP/1.1 listeners that answer every request
with 200 "ok" and count them. uvloop when installed.

    python -m integration.okserver ADDRESS --ports 8000 8001 ...   # 0 = any free port
        [--counter FILE]      # {"count": answered, "t": monotonic} rewritten every 0.5 s
        [--until-stdin-eof]   # exit when the parent closes our stdin (else run until killed)

Prints one line once every port listens: ``listening [port, ...]`` (the ports actually bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from integration.benchlib import raise_fd_limit

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class OkResponder(asyncio.Protocol):
    """One connection's end. Probe requests are tiny and arrive whole: one answer per request head."""

    count = 0  # requests answered by every connection of this process

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        n = data.count(b"\r\n\r\n")
        OkResponder.count += n
        self.transport.write(RESPONSE * n)


async def serve(address: str, ports: list[int], counter: Path | None, until_stdin_eof: bool) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(OkResponder, address, port, backlog=4096) for port in ports]
    print("listening", json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    if until_stdin_eof:
        await loop.run_in_executor(None, sys.stdin.read)
        return
    while True:
        if counter is not None:
            tmp = counter.with_suffix(".tmp")
            tmp.write_text(json.dumps({"count": OkResponder.count, "t": time.monotonic()}))
            tmp.replace(counter)
        await asyncio.sleep(0.5)


def read_counter(counter: Path) -> tuple[int, float] | None:
    """(requests answered, monotonic time of that count) from a --counter file; None until there is one."""
    try:
        d = json.loads(counter.read_text())
        return int(d["count"]), float(d["t"])
    except (OSError, ValueError, KeyError):
        return None


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def use_loop(name: str) -> None:
    """Run the next asyncio.run() on ``name``: "uvloop" or "asyncio"."""
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m integration.okserver", description=__doc__.split("\n")[0])
    ap.add_argument("address")
    ap.add_argument("--ports", type=int, nargs="+", required=True)
    ap.add_argument("--counter", type=Path)
    ap.add_argument("--until-stdin-eof", action="store_true")
    args = ap.parse_args(argv)
    raise_fd_limit()  # thousands of kept-alive probe connections
    use_loop("uvloop" if has_uvloop() else "asyncio")
    asyncio.run(serve(args.address, args.ports, args.counter, args.until_stdin_eof))
    return 0


if __name__ == "__main__":
    sys.exit(main())
