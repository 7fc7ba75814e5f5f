"""Bitrix24 REST client: webhook calls, `batch` packing, leaky-bucket pacing, retries by error code.

Error handling follows docs/api-notes.md#b24-error-shape: match the `error` field, not the HTTP status
(QUERY_LIMIT_EXCEEDED has been both 429 and 503), in any case, and guard the JSON decode (proxies answer
HTML). `_reason` classifies every answer that is an error, once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import structlog

from exporter.errors import ApiError, ApiFailureReason
from exporter.ratelimit import LeakyBucket
from exporter.snapshot import ApiTelemetry
from exporter.sources.retries import Retrier, RetryPolicy
from exporter.sources.sending import Answer, Sender, pace, refused

BATCH_LIMIT = 50
# Error codes, upper-cased: the API mixes cases (`expired_token`, `QUERY_LIMIT_EXCEEDED`), so every
# comparison goes through `upper()` (docs/api-notes.md#b24-error-shape).
AUTH_CODES = frozenset(code.upper() for code in (
    "NO_AUTH_FOUND", "INVALID_CREDENTIALS", "insufficient_scope", "expired_token", "invalid_token",
    "ACCESS_DENIED", "user_access_error", "authorization_error", "PORTAL_DELETED", "INVALID_REQUEST",
    "WRONG_AUTH_TYPE", "ERROR_OAUTH",
))
RATE_LIMIT_CODES = frozenset({"QUERY_LIMIT_EXCEEDED", "OVERLOAD_LIMIT"})
OPERATION_LIMIT = "OPERATION_TIME_LIMIT"
SERVER_CODES = frozenset({"INTERNAL_SERVER_ERROR", "ERROR_UNEXPECTED_ANSWER"})
RETRYABLE_COMMAND_CODES = frozenset({"QUERY_LIMIT_EXCEEDED", OPERATION_LIMIT, *SERVER_CODES})

RETRY = RetryPolicy(attempts=5, rate_limit_attempts=10, base_delay=0.5)

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class BatchCall:
    """Up to 50 commands sent in one `batch` request; keys map back to what each command asked."""

    commands: Mapping[str, str]


@dataclass(slots=True)
class BatchResult:
    """A batch answer with PHP's empty-list-instead-of-dict quirk already normalised."""

    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)
    times: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)  # result_total: a list command's `total`
    # the batch request's own top-level `time` block: the only reset time when every command was blocked
    # (docs/api-notes.md#b24-operation-time-limit)
    call_time: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OperationPause:
    """How long a method blocked by OPERATION_TIME_LIMIT is paused: until the portal's reset time, kept
    between `least` and `most` seconds; `default` when the answer has no reset time
    (docs/api-notes.md#b24-operation-time-limit)."""

    default: float = 60.0
    least: float = 1.0
    most: float = 600.0


PAUSE = OperationPause()


def command(method: str, params: Mapping[str, Any]) -> str:
    """A batch command: the part after `?` is a PHP-style query string (docs/api-notes.md#b24-batch-query-strings)."""
    return f"{method}?{urlencode(_php_pairs(params))}"


def _php_pairs(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            pairs.extend(_php_pairs(value, name))
        elif isinstance(value, list | tuple):
            pairs.extend(_php_pairs({str(i): v for i, v in enumerate(value)}, name))
        elif isinstance(value, bool):
            pairs.append((name, "true" if value else "false"))
        else:
            pairs.append((name, str(value)))
    return pairs


def chunk(commands: Mapping[str, str], size: int = BATCH_LIMIT) -> list[BatchCall]:
    """Pack commands into batch calls of at most `size`."""
    items = list(commands.items())
    return [BatchCall(dict(items[i:i + size])) for i in range(0, len(items), size)]


def _as_dict(section: Any) -> dict[str, Any]:
    """PHP writes an empty (or list-keyed) section as a JSON list: index it (docs/api-notes.md#b24-batch-empty-list)."""
    if section is None:
        return {}
    if isinstance(section, list):
        return {str(i): v for i, v in enumerate(section)}
    if isinstance(section, dict):
        return section  # decoded JSON: its keys are strings already, and nothing else holds it
    raise ApiError("invalid_response", f"batch section is {type(section).__name__}, not an object")


def parse_batch(body: Any) -> BatchResult:
    """Turn a decoded `batch` response into a BatchResult, or raise ApiError('invalid_response')."""
    if not isinstance(body, dict) or "result" not in body:
        raise ApiError("invalid_response", "batch answer has no result object")
    outer = body["result"]
    if not isinstance(outer, dict):
        raise ApiError("invalid_response", "batch result is not an object")
    parsed = BatchResult(results=_as_dict(outer.get("result")))
    if isinstance(body.get("time"), dict):
        parsed.call_time = body["time"]
    for key, err in _as_dict(outer.get("result_error")).items():
        if isinstance(err, dict):
            code = err.get("error")  # may be "" with only a description (docs/api-notes.md#b24-error-shape)
            parsed.errors[key] = (str(code) if code not in (None, "") else "unknown",
                                  str(err.get("error_description", ""))[:200])
        else:
            parsed.errors[key] = ("unknown", str(err)[:200])
    parsed.totals = _as_dict(outer.get("result_total"))
    for key, block in _as_dict(outer.get("result_time")).items():
        if isinstance(block, dict):
            parsed.times[key] = block
    return parsed


class Bitrix24Client:
    """Calls one portal through its incoming webhook; every request passes the shared leaky bucket."""

    def __init__(self, webhook_url: str, bucket: LeakyBucket, telemetry: ApiTelemetry, *,
                 timeout: float, max_concurrency: int, retry: RetryPolicy = RETRY,
                 pause: OperationPause = PAUSE, keepalive: float = 5.0) -> None:
        self._base = webhook_url if webhook_url.endswith("/") else webhook_url + "/"
        self._bucket = bucket
        self._telemetry = telemetry
        self._retries = Retrier(retry, timeout)
        self._operation_pause = pause
        # one slot per call, held across its retries, and as many connections as slots: a request never
        # queues for a connection, which would spend its timeout waiting because the cycle is long. An idle
        # connection is kept `keepalive` seconds (a source keeps them from one cycle to the next)
        self._slots = asyncio.Semaphore(max_concurrency)
        self._paused_until: dict[str, float] = {}
        self.operating: dict[str, float] = {}
        self.calls = 0
        self._http = Sender(telemetry, timeout=timeout, connections=max_concurrency, keepalive=keepalive)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, params: Mapping[str, Any], *, pause_key: str | None = None) -> Any:
        """POST one method with a JSON body; retries rate limits, 5xx and network faults with backoff."""
        async with self._slots:
            return await self._call(method, params, pause_key or method)

    async def _call(self, method: str, params: Mapping[str, Any], pause_key: str) -> Any:
        tries = self._retries.request()
        while True:
            await self._wait_for_pause(pause_key)
            await pace(self._bucket, self._telemetry)
            tries.sending()
            try:
                body = await self._attempt(method, params)
            except ApiError as exc:
                code = exc.code.upper()
                if code == OPERATION_LIMIT:
                    self._pause(pause_key, exc.retry_after)
                    if not tries.after_rate_limit():
                        raise
                    continue
                if exc.reason == "rate_limited":  # QUERY_LIMIT_EXCEEDED and friends, or a proxy's own 429
                    self._bucket.saturate()
                    if not tries.after_rate_limit():
                        raise
                    await asyncio.sleep(self._retries.backoff(tries.rate_limited))
                    continue
                delay = tries.after_fault(exc)
                if delay is None:
                    raise
                log.debug("bitrix24_retry", method=method, code=exc.code, attempt=tries.faults)
                await asyncio.sleep(delay)
            else:
                tries.answered()
                return body

    async def batch(self, call: BatchCall, *, pause_key: str) -> BatchResult:
        """Send one batch (halt=0: a failing command costs only itself)."""
        if len(call.commands) > BATCH_LIMIT:
            raise ValueError(f"a batch holds at most {BATCH_LIMIT} commands, got {len(call.commands)}")
        body = await self.call("batch", {"halt": 0, "cmd": dict(call.commands)}, pause_key=pause_key)
        result = parse_batch(body)
        operating = [o for o in map(_operating, result.times.values()) if o is not None]  # one per command
        self._note_operating(pause_key, max(operating, default=None))
        for code, _ in result.errors.values():
            self._telemetry.error(code)
        if any(code.upper() == OPERATION_LIMIT for code, _ in result.errors.values()):
            # commands blocked inside a batch: pause their method until the window resets. Blocked commands
            # have no `result_time`: the reset time is in the other commands' blocks and in the batch's own
            # (docs/api-notes.md#b24-operation-time-limit)
            resets = [_reset_in(block) for block in (*result.times.values(), result.call_time)]
            self._pause(pause_key, max((r for r in resets if r is not None), default=None))
        return result

    async def _attempt(self, method: str, params: Mapping[str, Any]) -> Any:
        self.calls += 1
        answer = await self._http.send(method, "POST", self._base + method, json=dict(params))
        return self._decode(method, answer)

    def _decode(self, method: str, answer: Answer) -> Any:
        status = answer.status
        body = answer.json()
        error = error_of(body)
        if error is not None:
            code, description = error
            code = code or f"http_{status}"  # an empty code with only a description is still an error
            reason = failure_reason(code, status)
            retry_after = _reset_in(body.get("time")) if code.upper() == OPERATION_LIMIT else None
            retryable = reason != "auth" and (status >= 500 or reason == "rate_limited")
            raise refused(self._telemetry, method, ApiError(
                code, description, status=status, retryable=retryable, retry_after=retry_after, reason=reason))
        if status >= 400 or not isinstance(body, dict):
            # not JSON, or not an object: on 2xx an unreadable answer worth another try, else the status decides
            code = f"http_{status}" if status >= 400 else "invalid_response"
            reason = failure_reason("", status) if status >= 400 else "invalid_response"
            raise refused(self._telemetry, method, ApiError(
                code, _content_hint(answer), status=status, retryable=status >= 500 or status < 400 or status == 429,
                reason=reason))
        self._telemetry.request(method, "success")
        if isinstance(body.get("time"), dict):
            self._note_operating(method, _operating(body["time"]))
        return body

    def _note_operating(self, method: str, operating: float | None) -> None:
        if operating is not None:
            self.operating[method] = max(self.operating.get(method, 0.0), operating)

    async def _wait_for_pause(self, key: str) -> None:
        until = self._paused_until.get(key)
        if until is None:
            return
        delay = until - time.time()
        if delay > 0:
            log.info("bitrix24_method_paused", method=key, seconds=round(delay, 1))
            self._telemetry.waited(delay)
            await asyncio.sleep(delay)
        self._paused_until.pop(key, None)

    def _pause(self, key: str, retry_after: float | None) -> None:
        pause = self._operation_pause
        delay = min(max(retry_after if retry_after is not None else pause.default, pause.least), pause.most)
        self._paused_until[key] = time.time() + delay
        log.warning("bitrix24_operation_time_limit", method=key, pause_seconds=round(delay, 1))


def _operating(block: Mapping[str, Any]) -> float | None:
    """A `time` block's `operating`: seconds the method has used of its window."""
    value = block.get("operating")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def error_of(body: Any) -> tuple[str, str] | None:
    """(code, description) when a decoded answer is an error: `{error, error_description}`, or REST 3.0's
    `{error: {code, message}}`. The code may be "0" (a controller error) or empty with only a description
    (docs/api-notes.md#b24-error-shape); both are errors. None when the answer carries no error."""
    if not isinstance(body, dict) or body.get("error") is None:
        return None
    error = body["error"]
    if isinstance(error, dict):
        code, description = error.get("code"), error.get("message")
    else:
        code, description = error, body.get("error_description")
    code = "" if code is None else str(code)
    description = "" if description is None else str(description)[:200]
    return (code, description) if code or description else None


def failure_reason(code: str, status: int) -> ApiFailureReason:
    """Why an answer with this error code (may be empty) and status is a failure: by code first, any case."""
    upper = code.upper()
    if upper in RATE_LIMIT_CODES or upper == OPERATION_LIMIT:
        return "rate_limited"
    if upper in AUTH_CODES or status in (401, 403):
        return "auth"
    if status == 429:  # a proxy's or load balancer's own limit, in its own words (or an HTML page)
        return "rate_limited"
    if status >= 500 or upper in SERVER_CODES:
        return "server_error"
    return "api_error"


def _reset_in(block: Any) -> float | None:
    """Seconds until a `time` block's `operating_reset_at`, when it carries one."""
    reset_at = block.get("operating_reset_at") if isinstance(block, dict) else None
    if isinstance(reset_at, int | float) and not isinstance(reset_at, bool):
        return max(0.0, float(reset_at) - time.time())
    return None


def _content_hint(answer: Answer) -> str:
    return f"HTTP {answer.status}, {answer.content_type()}, not a JSON object"


