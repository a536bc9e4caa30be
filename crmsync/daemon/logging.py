"""Structured logs on stdout (structlog): JSON lines by default, ``console`` for people; a journald priority
prefix when stdout is the journal stream.

Each JSON line starts with ``event``, then ``level``, ``timestamp`` and ``logger``, then the bound context
and the event's own keys. Levels: summaries of what happened (a run started and finished with its counts, a
full sync's pages, a token renewed) are ``info``; one line per record (a profile linked, an opt-out applied)
is ``debug``, because a nightly of 100 000 contacts must not write 100 000 lines; problems are ``warning``
and ``error``. Reports in the store keep every record's outcome whatever the level.

Flows bind ``integration`` and ``flow`` into structlog's context variables; trio gives every task a copy of
the context, so bindings never leak between integrations. Standard-library loggers (Hypercorn's, trio's) go
through the same renderer. Secrets cannot appear: config secrets are :class:`~crmsync.daemon.secrets.Secret`
objects whose repr is masked, connectors build error messages from API answers, not from requests, and every
line passes :func:`crmsync.redaction.redact_value` (known secrets, authorization-like values).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from crmsync.daemon.systemd import connected_to_journal
from crmsync.redaction import redact_value

_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
_FIRST = ("event", "level", "timestamp", "logger")


def _event_first(logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
    ordered = {key: event.pop(key) for key in _FIRST if key in event}
    ordered.update(event)
    return ordered


def _json_render(journal: bool) -> Any:
    json_renderer = structlog.processors.JSONRenderer(sort_keys=False)

    def render(logger: Any, name: str, event: dict[str, Any]) -> str:
        level = str(event.get("level", name))
        rendered = json_renderer(logger, name, _event_first(logger, name, event))
        line = rendered.decode() if isinstance(rendered, bytes) else str(rendered)
        return f"<{_PRIORITY.get(level, 6)}>{line}" if journal else line

    return render


def _redact(logger: Any, name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    # the last net: an upstream answer logged as it came may echo our credentials (crmsync.redaction)
    return {k: redact_value(v) for k, v in event.items()}


def _stream_fd(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # StringIO and friends
        return None


def configure_logging(level: str = "info", stream: TextIO | None = None, fmt: str = "json") -> None:
    """structlog and stdlib loggers (Hypercorn, trio) both end in one formatter on ``stream``."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    stream = stream or sys.stdout
    journal = connected_to_journal(_stream_fd(stream))
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    renderer: list[Any]
    if fmt == "console":
        colors = bool(getattr(stream, "isatty", lambda: False)())
        renderer = [structlog.processors.format_exc_info, _redact, structlog.dev.ConsoleRenderer(colors=colors)]
    else:
        renderer = [structlog.processors.format_exc_info, _redact, _json_render(journal)]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request lines from Hypercorn's access log and from httpx/httpcore are noise at info (and would put
    # query strings in the logs); crmsync_api_requests_total and crmsync_webhook_requests_total count them.
    for noisy in ("hypercorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
