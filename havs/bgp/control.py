"""BIRD's control socket from asyncio: one connection, one command at a time, no `birdc` fork per change."""

from __future__ import annotations

import asyncio

from havs.core.bgp import BirdError, Framer, Reply


class BirdControl:
    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path, self.timeout = path, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._framer = Framer()
        self._pending: list[Reply] = []
        self._lock = asyncio.Lock()

    async def connect(self) -> str:
        """Connect and read BIRD's greeting ('0001 BIRD 2.0.12 ready.'); returns its text."""
        self.close()
        self._framer, self._pending = Framer(), []
        self._reader, self._writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), self.timeout)
        return (await self._next()).text

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def command(self, text: str) -> Reply:
        """Send one command and return its reply; BirdError on an error reply, OSError/TimeoutError when
        the socket fails (the connection is closed then: the next call must `connect` again)."""
        async with self._lock:
            if self._writer is None:
                raise ConnectionError("not connected to BIRD")
            try:
                self._writer.write(text.encode() + b"\n")
                await asyncio.wait_for(self._writer.drain(), self.timeout)
                reply = await self._next()
            except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError):
                self.close()
                raise
        if not reply.ok:
            raise BirdError(f"{text}: {reply.text}")
        return reply

    async def _next(self) -> Reply:
        assert self._reader is not None
        while not self._pending:
            data = await asyncio.wait_for(self._reader.read(65536), self.timeout)
            if not data:
                raise ConnectionError("BIRD closed its control socket")
            self._pending += self._framer.feed(data)
        return self._pending.pop(0)
