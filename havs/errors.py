"""The errors havs raises on purpose. Each names where the problem is."""

from __future__ import annotations

from dataclasses import dataclass


class HavsError(Exception):
    """Base of every error havs reports to an operator."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config file: `file:line: path: message`."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(HavsError):
    """A config file that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class PacketError(HavsError):
    """A received packet that is not a valid advertisement; `reason` is a short stable word for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ApplyError(HavsError):
    """A kernel operation (netlink) that failed; `target` names the service or destination it concerns."""

    def __init__(self, target: str, message: str, errno: int | None = None) -> None:
        self.target = target
        self.errno = errno
        super().__init__(f"{target}: {message}")


class IpvsUnavailable(HavsError):
    """The running kernel has no IPVS (no ip_vs module, no generic netlink family)."""
