"""Structured JSON logs on stdout (structlog), with a journald priority prefix under systemd.

Flows bind ``integration`` and ``flow`` into structlog's context variables; trio gives every task a copy of
the context, so bindings never leak between integrations. Standard-library loggers (Hypercorn's, trio's) go
through the same JSON renderer. Secrets cannot appear: config secrets are :class:`~crmsync.daemon.secrets.Secret`
objects whose repr is masked, connectors build error messages from API answers, not from requests, and every
line passes :func:`crmsync.redaction.redact_value` (known secrets, authorization-like values).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from crmsync.redaction import redact_value

_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def _render(journal: bool) -> Any:
    json_renderer = structlog.processors.JSONRenderer(sort_keys=False)

    def render(logger: Any, name: str, event: dict[str, Any]) -> str:
        rendered = json_renderer(logger, name, event)
        line = rendered.decode() if isinstance(rendered, bytes) else rendered
        if journal:
            level = str(event.get("level", name))
            return f"<{_PRIORITY.get(level, 6)}>{line}"
        return str(line)

    return render


def _redact(logger: Any, name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    # the last net: an upstream answer logged as it came may echo our credentials (crmsync.redaction)
    return {k: redact_value(v) for k, v in event.items()}


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """structlog and stdlib loggers (Hypercorn, trio) both end in one JSON formatter on ``stream``."""
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    stream = stream or sys.stdout
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
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _redact,
                _render(journal),
            ],
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
