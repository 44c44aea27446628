"""structlog set-up: one event per line, JSON for machines and journald, colour console for people."""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]


def _under_systemd() -> bool:
    # journald sets JOURNAL_STREAM for services whose stdout/stderr go to the journal; INVOCATION_ID for any unit.
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def resolve_format(fmt: LogFormat, stream: TextIO) -> Literal["json", "console"]:
    if fmt != "auto":
        return fmt
    if _under_systemd() or not stream.isatty():
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
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(sort_keys=False)]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=out.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    log: structlog.stdlib.BoundLogger = structlog.get_logger()
    return log.bind(node=node) if node else log


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
