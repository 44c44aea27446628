"""structlog set-up: one event per line, JSON for machines and journald, colour console for people.

Logging never raises into the caller. A log call sits on every path that matters (the SIGTERM handler,
GARP, the reconcile pass), so an exception from it — stdout gone (EPIPE: `havs run | tee` ended, the
journal stream closed), a value that cannot be rendered, a bad format string — would turn a log line
into a stuck daemon. Every such failure is swallowed and counted (`failures()`); a value that cannot be
rendered still gives a line with the event's name; a stream that is gone for good is pointed at
/dev/null so that the interpreter's final flush does not fail either (it would exit 120).

Priorities in the journal: when stdout *is* the journal's stream (JOURNAL_STREAM names its device and
inode), each line starts with the syslog priority `<N>`, which journald strips and stores as PRIORITY=N
(errors 3, warnings 4, info 6, debug 7), so `journalctl -p err -u havs` shows the errors. Never on a
terminal, a pipe or a file: there the line is plain JSON. The `<N>` prefix rather than the native journal
protocol: it keeps one output path (stdout, which the unit already connects to the journal, and which
`havs run | tee` keeps), needs no extra socket in the sandbox, and `journalctl -o cat` still shows the
JSON line unchanged; the native protocol's extra fields would duplicate what the JSON already carries.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]


def _under_systemd() -> bool:
    # journald sets JOURNAL_STREAM for services whose stdout/stderr go to the journal; INVOCATION_ID for any unit.
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


# syslog priorities (RFC 5424) of structlog's method names
PRIORITY = {"debug": 7, "info": 6, "msg": 6, "log": 6, "warning": 4, "warn": 4, "error": 3, "err": 3,
            "exception": 3, "failure": 3, "critical": 2, "fatal": 2}


def journal_stream(stream: TextIO) -> bool:
    """True if `stream` is the journal's stdout stream for this service (JOURNAL_STREAM is `dev:inode`)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        info = os.fstat(stream.fileno())
    except Exception:  # unset, malformed, or a stream without a descriptor (StringIO)
        return False
    return (info.st_dev, info.st_ino) == (dev, ino) and not _isatty(stream)


def resolve_format(fmt: LogFormat, stream: TextIO) -> Literal["json", "console"]:
    if fmt != "auto":
        return fmt
    if _under_systemd() or not _isatty(stream):
        return "json"
    return "console"


def setup_logging(fmt: LogFormat = "auto", *, node: str | None = None, level: str = "info",
                  stream: TextIO | None = None) -> structlog.stdlib.BoundLogger:
    """Configure structlog globally and return the root logger bound to this director's name.

    JSON lines carry `timestamp` (UTC, milliseconds), `level`, `event`, `node` and the event's fields.
    """
    out = stream or sys.stdout
    chosen = resolve_format(fmt, out)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="%Y-%m-%dT%H:%M:%S.%fZ", utc=True),
        _milliseconds,
        _trailing_underscore,
    ]
    if chosen == "json":
        processors += [structlog.processors.format_exc_info,
                       _safe_renderer(structlog.processors.JSONRenderer(sort_keys=False))]
    else:
        processors += [_safe_renderer(structlog.dev.ConsoleRenderer(colors=_isatty(out)))]
    structlog.configure(
        processors=processors,
        wrapper_class=_never_raising(
            structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()])),
        logger_factory=lambda *_args: _Writer(out, priorities=journal_stream(out)),
        cache_logger_on_first_use=False,
    )
    log: structlog.stdlib.BoundLogger = structlog.get_logger()
    return log.bind(node=node) if node else log


# ------------------------------------------------------------------------------- never raise

_failures = 0  # log calls that could not write their line as asked (dropped or degraded)
_LEVEL_METHODS = ("debug", "info", "warning", "warn", "error", "err", "critical", "fatal", "exception", "msg",
                  "log", "_proxy_to_logger")


def failures() -> int:
    """How many log calls failed (their line dropped or degraded) since the process started."""
    return _failures


def _failed() -> None:
    global _failures
    _failures += 1


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except Exception:  # a closed stream raises ValueError
        return False


def _never_raising(cls: type[Any]) -> type[Any]:
    """The bound-logger class with every logging method made total: an exception becomes a count."""

    def guard(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kw: Any) -> Any:
            try:
                return method(self, *args, **kw)
            except Exception:
                _failed()
                return None

        return call

    namespace = {name: guard(getattr(cls, name)) for name in _LEVEL_METHODS if hasattr(cls, name)}
    return type(f"NeverRaising{cls.__name__}", (cls,), namespace)


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return "<unprintable>"


def _safe_renderer(render: Callable[..., Any]) -> Callable[..., Any]:
    """A value that cannot be rendered (a repr that raises, a cycle) still gives a line naming the event."""

    def safe(logger: object, name: str, event: dict[str, Any]) -> Any:
        try:
            return render(logger, name, dict(event))  # a copy: renderers pop keys we may still need
        except Exception as e:
            _failed()
            line = {key: _safe_str(event[key]) for key in ("timestamp", "level", "event", "node") if key in event}
            line["log_error"] = f"this event could not be rendered: {type(e).__name__}"
            return json.dumps(line)

    return safe


class _Writer:
    """structlog's PrintLogger, made total: one line per event, flushed, and never an exception."""

    def __init__(self, stream: TextIO, priorities: bool = False) -> None:
        self._stream = stream
        self._lock = threading.RLock()  # re-entrant: a signal handler may log while a line is being written
        self._priorities = priorities
        for name, priority in PRIORITY.items():
            setattr(self, name, functools.partial(self._write, priority))

    def msg(self, message: str) -> None:
        self._write(6, message)

    def _write(self, priority: int, message: str) -> None:
        try:
            if self._priorities:
                # journald reads `<N>` before the first line of a message; a message's own newlines are
                # escaped by the JSON renderer, so one event is one journal entry
                message = f"<{priority}>{message}"
            with self._lock:
                self._stream.write(message + "\n")
                self._stream.flush()
        except (BrokenPipeError, ConnectionResetError):
            _failed()
            self._gone()
        except Exception:  # closed stream (ValueError), EAGAIN, ENOSPC, …: this line is lost, the caller goes on
            _failed()

    def _gone(self) -> None:
        """The reader went away for good: send what follows (and the buffered rest) to /dev/null."""
        with contextlib.suppress(Exception):
            fd = self._stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
            self._stream.flush()


def _milliseconds(_logger: object, _name: str, event: dict[str, object]) -> dict[str, object]:
    # strftime has no milliseconds; trim microseconds "…12.345678Z" to "…12.345Z".
    ts = event.get("timestamp")
    if isinstance(ts, str) and len(ts) == 27:
        event["timestamp"] = ts[:23] + "Z"
    return event


def _trailing_underscore(_logger: object, _name: str, event: dict[str, object]) -> dict[str, object]:
    # `from` is a Python keyword, so events say `from_=`; the line says `from`.
    for key in [k for k in event if k.endswith("_") and not k.startswith("_")]:
        event[key[:-1]] = event.pop(key)
    return event
