"""structlog set-up (json | console) with a processor that masks every known secret."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

_WEBHOOK_SECRET = re.compile(r"(/rest/\d+/)[^/\s\"']+")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"']+")
_secrets: set[str] = set()


def register_secrets(values: Iterable[str]) -> None:
    """Secrets registered here are replaced by *** wherever they appear in a log event."""
    _secrets.update(v for v in values if len(v) >= 4)


def mask(text: str) -> str:
    """Mask registered secrets, webhook path secrets and bearer tokens in any text."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    text = _WEBHOOK_SECRET.sub(r"\1***", text)
    return _BEARER.sub(r"\1***", text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, BaseException):
        return mask(f"{type(value).__name__}: {value}")
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return value


def _mask_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        event[key] = _mask_value(value)
    return event


class _AiohttpBridge(logging.Handler):
    """aiohttp logs a malformed request with a traceback; a client's mistake deserves one line."""

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        structlog.get_logger().warning("http_bad_request", logger=record.name,
                                       detail=str(error) if error else record.getMessage())


def configure(level: str = "info", fmt: str = "console", stream: Any = None) -> None:
    """Configure structlog once, at start-up; modules only call structlog.get_logger()."""
    server_log = logging.getLogger("aiohttp.server")
    server_log.handlers = [_AiohttpBridge()]
    server_log.propagate = False
    stream = stream or sys.stderr
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _mask_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )

