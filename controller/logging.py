"""structlog set-up: JSON lines when not on a TTY, readable console on a TTY, with redaction."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Keys whose values must never reach a log line in clear.
SECRET_KEYS = frozenset(
    {"card", "card_number", "pin", "key", "scbk", "secret", "template", "password"}
)


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret values, keeping the last two characters of cards."""
    for key in list(event_dict):
        if key.lower() in SECRET_KEYS:
            value = str(event_dict[key])
            keep = value[-2:] if key.startswith("card") and len(value) > 4 else ""
            event_dict[key] = "***" + keep
    return event_dict


def configure(
    level: str = "info", stream: TextIO | None = None, *, json: bool | None = None
) -> None:
    """Configure structlog once for the process."""
    out = stream or sys.stderr
    use_json = not out.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
