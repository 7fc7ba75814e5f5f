"""One logging pipeline: structlog events and stdlib records (aiohttp, asyncio, warnings) come out alike.

Every record goes through the root logger's handler and structlog's ProcessorFormatter, so it keeps its
level and traceback, is rendered in the chosen format (json | console), carries the context variables bound
where it was logged (a cycle's `source` and `target`), and has every known secret masked.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

_WEBHOOK_SECRET = re.compile(r"(/rest/\d+/)[^/\s\"']+")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"']+")
_secrets: set[str] = set()

# structlog's own events reach the handler through this stdlib logger; records of other names are foreign
_NAME = "exporter"

EventDict = MutableMapping[str, Any]


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


def _mask_processor(_: Any, __: str, event: EventDict) -> EventDict:
    for key, value in list(event.items()):
        event[key] = _mask_value(value)
    return event


def _name_foreign_logger(_: Any, __: str, event: EventDict) -> EventDict:
    event["logger"] = event["_record"].name
    return event


class _ClientFaults(logging.Filter):
    """aiohttp logs a malformed request, or a client that hung up mid-request, as an error with a traceback.
    Neither is the server's bug: a malformed request becomes one warning line (or stays at debug, where
    aiohttp puts non-HTTP traffic on the port), a vanished client one debug line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            event, level = "http_bad_request", logging.WARNING if record.levelno >= logging.WARNING else logging.DEBUG
        elif isinstance(error, ConnectionError):
            event, level = "http_client_gone", logging.DEBUG
        else:
            return True
        if not logging.getLogger().isEnabledFor(level):
            return False
        record.msg, record.args, record.exc_info, record.exc_text = event, (), None, None
        record.levelno, record.levelname = level, logging.getLevelName(level)
        record.detail = str(error)
        return True


class _PipelineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler configure() installs (and replaces when called again)."""


def configure(level: str = "info", fmt: str = "console", stream: Any = None) -> None:
    """Configure logging once, at start-up; modules only call structlog.get_logger()."""
    threshold = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *_: logging.getLogger(_NAME),
        cache_logger_on_first_use=False,
    )
    handler = _PipelineHandler(stream or sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _name_foreign_logger, structlog.stdlib.ExtraAdder(allow=["detail"])],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _mask_processor,
            renderer,
        ],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _PipelineHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
    server = logging.getLogger("aiohttp.server")
    for old_filter in [f for f in server.filters if isinstance(f, _ClientFaults)]:
        server.removeFilter(old_filter)
    server.addFilter(_ClientFaults())


def log_loop_exception(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's exception handler: "Task exception was never retrieved" and exceptions in callbacks become
    error events with their traceback, like any other bug."""
    fields = {key: repr(context[key]) for key in ("task", "future", "handle") if key in context}
    structlog.get_logger().error("asyncio_error", detail=context.get("message", ""),
                                 exc_info=context.get("exception") or False, **fields)
