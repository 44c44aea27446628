"""BIRD 2 as havs's child process, tied to havs's lifetime.

`setpriv --pdeathsig KILL` asks the kernel to SIGKILL BIRD when havs dies, however it dies (kill -9
included): BIRD's BGP sessions close with it, so the routers withdraw this director's VIPs at once instead
of after a hold time. A director that dies whole is left to BFD.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

NICE = -10


class BirdProcess:
    def __init__(self, binary: str, run_dir: str) -> None:
        self.binary, self.run_dir = binary, Path(run_dir)
        self.conf = self.run_dir / "bird.conf"
        self.socket = str(self.run_dir / "bird.ctl")
        self.log_file = str(self.run_dir / "bird.log")
        self.proc: asyncio.subprocess.Process | None = None

    def write_config(self, text: str) -> None:
        """Atomically, mode 0600 (it may hold BGP passwords)."""
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.conf.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.conf)

    def argv(self) -> list[str]:
        bird = shutil.which(self.binary) or self.binary
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        # -f: stay in the foreground (a daemonised BIRD would lose the death signal and our process handle)
        return [setpriv, "--pdeathsig", "KILL", bird, "-f", "-c", str(self.conf), "-s", self.socket,
                "-P", str(self.run_dir / "bird.pid")]

    async def check(self) -> str | None:
        """`bird -p`: BIRD's own verdict on the config (None: accepted), before anything is started."""
        proc = await asyncio.create_subprocess_exec(shutil.which(self.binary) or self.binary, "-p", "-c",
                                                    str(self.conf), stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return None if proc.returncode == 0 else (out.decode("utf-8", "replace").strip() or f"rc={proc.returncode}")

    async def start(self) -> str | None:
        """Start BIRD; returns why its priority could not be raised (None: raised)."""
        with open(self.run_dir / "bird.out", "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(*self.argv(), stdin=asyncio.subprocess.DEVNULL,
                                                             stdout=out, stderr=out, start_new_session=True)
        try:
            # BFD misses 3 intervals (300 ms) if BIRD waits for a CPU busy with health checks or an IPVS
            # apply: a false "director down" moves flows for nothing. Ahead of ordinary processes.
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, NICE)
        except OSError as e:
            return e.strerror
        return None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def wait_socket(self, timeout: float) -> bool:
        """Until BIRD listens on its control socket (it parses the config first), or it exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and self.running:
            if os.path.exists(self.socket):
                return True
            await asyncio.sleep(0.02)
        return False

    async def stop(self, timeout: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode
