"""Bitrix24 REST client: webhook calls, `batch` packing, leaky-bucket pacing, retries by error code.

Error handling follows docs/api-notes.md#b24-error-shape: match the `error` field, not the HTTP status
(QUERY_LIMIT_EXCEEDED has been both 429 and 503), and guard the JSON decode (proxies answer HTML).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import structlog

from exporter.errors import ApiError
from exporter.ratelimit import LeakyBucket
from exporter.snapshot import ApiTelemetry
from exporter.sources.transport import FaultRetries, pace, timed_send

BATCH_LIMIT = 50
AUTH_CODES = frozenset({
    "NO_AUTH_FOUND", "INVALID_CREDENTIALS", "insufficient_scope", "expired_token", "invalid_token",
    "ACCESS_DENIED", "user_access_error", "authorization_error", "PORTAL_DELETED", "INVALID_REQUEST",
    "WRONG_AUTH_TYPE", "ERROR_OAUTH",
})
RATE_LIMIT_CODES = frozenset({"QUERY_LIMIT_EXCEEDED", "OVERLOAD_LIMIT"})
OPERATION_LIMIT = "OPERATION_TIME_LIMIT"
RETRYABLE_COMMAND_CODES = frozenset({
    "QUERY_LIMIT_EXCEEDED", OPERATION_LIMIT, "INTERNAL_SERVER_ERROR", "ERROR_UNEXPECTED_ANSWER",
})

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


@dataclass(slots=True)
class RetryPolicy:
    attempts: int = 5  # tries of one call on 5xx, network faults, timeouts and unreadable answers
    rate_limit_attempts: int = 10
    base_delay: float = 0.5
    max_delay: float = 30.0
    retry_budget: float = 30.0  # seconds of failed tries and backoff one call may spend (transport.FaultRetries)
    default_operation_pause: float = 60.0
    min_operation_pause: float = 1.0
    max_operation_pause: float = 600.0


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
        return {str(k): v for k, v in section.items()}
    raise ApiError("invalid_response", f"batch section is {type(section).__name__}, not an object")


def parse_batch(body: Any) -> BatchResult:
    """Turn a decoded `batch` response into a BatchResult, or raise ApiError('invalid_response')."""
    if not isinstance(body, dict) or "result" not in body:
        raise ApiError("invalid_response", "batch answer has no result object")
    outer = body["result"]
    if not isinstance(outer, dict):
        raise ApiError("invalid_response", "batch result is not an object")
    parsed = BatchResult(results=_as_dict(outer.get("result")))
    for key, err in _as_dict(outer.get("result_error")).items():
        if isinstance(err, dict):
            parsed.errors[key] = (str(err.get("error", "unknown")), str(err.get("error_description", ""))[:200])
        else:
            parsed.errors[key] = ("unknown", str(err)[:200])
    for key, block in _as_dict(outer.get("result_time")).items():
        if isinstance(block, dict):
            parsed.times[key] = block
    return parsed


class Bitrix24Client:
    """Calls one portal through its incoming webhook; every request passes the shared leaky bucket."""

    def __init__(self, webhook_url: str, bucket: LeakyBucket, telemetry: ApiTelemetry, *,
                 timeout: float, max_concurrency: int, retry: RetryPolicy | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._base = webhook_url if webhook_url.endswith("/") else webhook_url + "/"
        self._bucket = bucket
        self._telemetry = telemetry
        self._retry = retry or RetryPolicy()
        self._timeout = timeout
        self._faults = FaultRetries()
        # one slot per call, held across its retries, and as many connections as slots: a request never
        # queues for a connection, so httpx's pool timeout cannot fire because the cycle is long
        self._slots = asyncio.Semaphore(max_concurrency)
        self._paused_until: dict[str, float] = {}
        self.operating: dict[str, float] = {}
        self.calls = 0
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), transport=transport, follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "tasks-exporter"},
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, params: Mapping[str, Any], *, pause_key: str | None = None) -> Any:
        """POST one method with a JSON body; retries rate limits, 5xx and network faults with backoff."""
        async with self._slots:
            return await self._call(method, params, pause_key or method)

    async def _call(self, method: str, params: Mapping[str, Any], pause_key: str) -> Any:
        failures = 0
        rate_limited = 0
        spent = 0.0  # seconds of failed tries and their backoff (FaultRetries)
        while True:
            await self._wait_for_pause(pause_key)
            await pace(self._bucket, self._telemetry)
            started = time.monotonic()
            try:
                body = await self._attempt(method, params)
            except ApiError as exc:
                if exc.code == OPERATION_LIMIT:
                    self._faults.answered()
                    self._pause(pause_key, exc.retry_after)
                    rate_limited += 1
                    if rate_limited >= self._retry.rate_limit_attempts:
                        raise
                    continue
                if exc.code in RATE_LIMIT_CODES:
                    self._faults.answered()
                    self._bucket.saturate()
                    rate_limited += 1
                    if rate_limited >= self._retry.rate_limit_attempts:
                        raise
                    await asyncio.sleep(self._backoff(rate_limited))
                    continue
                failures += 1
                delay = self._backoff(failures)
                spent += time.monotonic() - started + delay
                if not self._faults.retry(exc, failures, spent, attempts=self._retry.attempts,
                                          budget=self._retry.retry_budget, timeout=self._timeout):
                    raise
                log.debug("bitrix24_retry", method=method, code=exc.code, attempt=failures)
                await asyncio.sleep(delay)
            else:
                self._faults.answered()
                return body

    async def batch(self, call: BatchCall, *, pause_key: str) -> BatchResult:
        """Send one batch (halt=0: a failing command costs only itself)."""
        if len(call.commands) > BATCH_LIMIT:
            raise ValueError(f"a batch holds at most {BATCH_LIMIT} commands, got {len(call.commands)}")
        body = await self.call("batch", {"halt": 0, "cmd": dict(call.commands)}, pause_key=pause_key)
        result = parse_batch(body)
        for block in result.times.values():
            self._note_operating(pause_key, block)
        for code, _ in result.errors.values():
            self._telemetry.error(code)
        if any(code == OPERATION_LIMIT for code, _ in result.errors.values()):
            # commands blocked inside a batch: pause their method until the window resets
            # (docs/api-notes.md#b24-operation-time-limit)
            resets = [_reset_in({"time": block}) for block in result.times.values()]
            self._pause(pause_key, max((r for r in resets if r is not None), default=None))
        return result

    async def _attempt(self, method: str, params: Mapping[str, Any]) -> Any:
        self.calls += 1
        response = await timed_send(self._telemetry, method,
                                    lambda: self._http.post(self._base + method, json=dict(params)), self._timeout)
        return self._decode(method, response)

    def _decode(self, method: str, response: httpx.Response) -> Any:
        try:
            body = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):  # REST 3.0 shape {error: {code, message}}
            error = error.get("code")
        if error is not None and error != "":
            code = str(error)
            description = str(body.get("error_description", ""))[:200] if isinstance(body, dict) else ""
            self._telemetry.error(code)
            self._telemetry.request(method, _outcome(code, response.status_code))
            retry_after = _reset_in(body) if code == OPERATION_LIMIT else None
            retryable = code not in AUTH_CODES and (response.status_code >= 500 or code in RATE_LIMIT_CODES)
            raise ApiError(code, description, status=response.status_code, retryable=retryable,
                           retry_after=retry_after)
        if response.status_code >= 400 or not isinstance(body, dict):
            outcome = "invalid_response" if response.status_code < 400 else _outcome("", response.status_code)
            self._telemetry.request(method, outcome)
            code = f"http_{response.status_code}" if response.status_code >= 400 else "invalid_response"
            self._telemetry.error(code)
            raise ApiError(code, _content_hint(response), status=response.status_code,
                           retryable=response.status_code >= 500 or response.status_code < 400)
        self._telemetry.request(method, "success")
        if isinstance(body.get("time"), dict):
            self._note_operating(method, body["time"])
        return body

    def _note_operating(self, method: str, block: Mapping[str, Any]) -> None:
        operating = block.get("operating")
        if isinstance(operating, int | float) and not isinstance(operating, bool):
            self.operating[method] = max(self.operating.get(method, 0.0), float(operating))

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
        delay = retry_after if retry_after is not None else self._retry.default_operation_pause
        delay = min(max(delay, self._retry.min_operation_pause), self._retry.max_operation_pause)
        self._paused_until[key] = time.time() + delay
        log.warning("bitrix24_operation_time_limit", method=key, pause_seconds=round(delay, 1))

    def _backoff(self, attempt: int) -> float:
        delay = min(self._retry.max_delay, self._retry.base_delay * 2 ** (attempt - 1))
        return float(delay * random.uniform(0.5, 1.5))


def _outcome(code: str, status: int) -> str:
    if code in RATE_LIMIT_CODES or code == OPERATION_LIMIT:
        return "rate_limited"
    if code in AUTH_CODES or status in (401, 403):
        return "auth_error"
    if status >= 500:
        return "server_error"
    return "client_error" if status >= 400 or code else "success"


def _reset_in(body: Any) -> float | None:
    """Seconds until `time.operating_reset_at`, when the answer carries it."""
    block = body.get("time") if isinstance(body, dict) else None
    reset_at = block.get("operating_reset_at") if isinstance(block, dict) else None
    if isinstance(reset_at, int | float) and not isinstance(reset_at, bool):
        return max(0.0, float(reset_at) - time.time())
    return None


def _content_hint(response: httpx.Response) -> str:
    kind = response.headers.get("content-type", "unknown").split(";")[0]
    return f"HTTP {response.status_code}, {kind}, not a JSON object"


