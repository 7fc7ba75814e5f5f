"""Pachca REST client: bearer auth, client-side pacing, retries by status, cursor walk, both error shapes.

The rules come from docs/api-notes.md#pachca: ~50 req/s per token; 429 carries Retry-After (a long
one means the token is banned for a while, so the SDK gives up instead of sleeping); 5xx is retried with
backoff 1 s, 2 s, 4 s x jitter 0.5-1.5; 401/403 answer the OAuthError shape {error, error_description},
other 4xx the ApiError shape {errors: [{code, ...}]}; cursors are never null, `has_next: false` ends.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from exporter.config import Secret
from exporter.errors import ApiError, ApiFailureReason
from exporter.ratelimit import LeakyBucket
from exporter.snapshot import ApiTelemetry
from exporter.sources.retries import Retrier, RetryPolicy
from exporter.sources.sending import Answer, Sender, pace, refused

REQUESTS_PER_SECOND = 50  # "all other API methods", per token (docs/api-notes.md#pachca-rate-limit)
RETRY = RetryPolicy(attempts=4, rate_limit_attempts=4, base_delay=1.0)
MAX_RETRY_AFTER = 60.0  # a longer Retry-After fails the cycle and pauses requests instead

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list method, with the pagination fields read leniently."""

    data: list[Any]
    next_page: str | None  # None when missing, null or not a string
    has_next: bool | None  # None when missing (older API) or not a boolean


def parse_page(body: Mapping[str, Any]) -> Page:
    """Read `meta.paginate` of a 200 answer whose `data` is already known to be a list."""
    meta = body.get("meta")
    paginate = meta.get("paginate") if isinstance(meta, dict) else None
    if not isinstance(paginate, dict):
        paginate = {}
    cursor = paginate.get("next_page")
    has_next = paginate.get("has_next")
    return Page(data=body["data"], next_page=cursor if isinstance(cursor, str) and cursor else None,
                has_next=has_next if isinstance(has_next, bool) else None)


class PachcaClient:
    """GETs list methods of one workspace with its token; every request passes a 50 req/s bucket."""

    def __init__(self, base_url: str, token: Secret, telemetry: ApiTelemetry, *, timeout: float,
                 retry: RetryPolicy = RETRY, max_retry_after: float = MAX_RETRY_AFTER,
                 clock: Callable[[], float] = time.time) -> None:
        self._base = base_url.rstrip("/")
        self._telemetry = telemetry
        self._retries = Retrier(retry, timeout)
        self._max_retry_after = max_retry_after
        self._clock = clock
        self._bucket = LeakyBucket(REQUESTS_PER_SECOND, REQUESTS_PER_SECOND)
        self._paused_until = 0.0
        self.calls = 0
        self._http = Sender(telemetry, timeout=timeout, headers={"Authorization": f"Bearer {token.reveal()}"})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def walk(self, path: str, *, limit: int, max_pages: int) -> AsyncGenerator[list[Any], None]:
        """Yield the `data` of every page of a list method, following `next_page`.

        Ends on `has_next: false`, a missing cursor or a cursor already followed, and on an empty page only
        where `has_next` is missing (the API before 2026-05-06 ended so; since, pages may be short or empty
        before the end: docs/api-notes.md#pachca-has-next); a walk that reaches `max_pages` stops there with
        a warning instead of looping forever.
        """
        cursor: str | None = None
        followed: set[str] = set()
        for number in range(1, max_pages + 1):
            params = {"limit": str(limit)} if cursor is None else {"limit": str(limit), "cursor": cursor}
            page = parse_page(await self.get(path, params))
            yield page.data
            if page.has_next is False or page.next_page is None or (not page.data and page.has_next is None):
                return
            if page.next_page in followed:
                log.warning("pachca_cursor_repeated", path=path, pages=number)
                return
            followed.add(page.next_page)
            cursor = page.next_page
        log.warning("pachca_page_cap_reached", path=path, max_pages=max_pages,
                    hint="more pages follow; raise max_pages if the workspace is really this large")

    async def get(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        """GET one list page; retries 429 (Retry-After), 5xx, network faults and unreadable bodies."""
        method = f"GET {path}"
        tries = self._retries.request()
        while True:
            self._check_pause()
            await pace(self._bucket, self._telemetry)
            tries.sending()
            try:
                body = await self._attempt(method, path, params)
            except ApiError as exc:
                if exc.status == 429:
                    more = tries.after_rate_limit()
                    self._check_retry_after(exc, path)
                    if not more:
                        raise
                    delay = self._rate_limit_delay(exc, tries.rate_limited)
                else:
                    fault_delay = tries.after_fault(exc)
                    if fault_delay is None:
                        raise
                    delay = fault_delay
                log.debug("pachca_retry", path=path, code=exc.code, delay_s=round(delay, 3))
                await asyncio.sleep(delay)
            else:
                tries.answered()
                return body

    async def _attempt(self, method: str, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        self.calls += 1
        answer = await self._http.send(method, "GET", self._base + path, params=params)
        return self._decode(method, answer)

    def _decode(self, method: str, answer: Answer) -> dict[str, Any]:
        status = answer.status
        body = answer.json()
        if 200 <= status < 300:
            if isinstance(body, dict) and isinstance(body.get("data"), list):
                self._telemetry.request(method, "success")
                return body
            raise refused(self._telemetry, method, ApiError(
                "invalid_response", _shape_hint(answer, body), status=status, retryable=True))
        code, message = error_of(body, status, answer)
        retry_after = None
        reason: ApiFailureReason
        if status == 429:
            reason, retryable = "rate_limited", True
            retry_after = retry_after_seconds(answer.headers.get("Retry-After"))
        elif status in (401, 403):
            reason, retryable = "auth", False
        elif status >= 500:
            reason, retryable = "server_error", True
        else:
            reason, retryable = "api_error", False
        raise refused(self._telemetry, method, ApiError(
            code, message, status=status, retryable=retryable, retry_after=retry_after, reason=reason))

    def _check_retry_after(self, exc: ApiError, path: str) -> None:
        """A Retry-After beyond the cap is an overload ban: hammering it prolongs the ban, so the cycle fails
        and requests pause until it passes (docs/api-notes.md#pachca-long-ban)."""
        wait = exc.retry_after
        if wait is not None and wait > self._max_retry_after:
            self._paused_until = self._clock() + wait
            log.warning("pachca_rate_limit_pause", path=path, retry_after_s=wait)
            cap = self._max_retry_after
            raise ApiError(exc.code, f"Retry-After {wait:g}s exceeds the {cap:g}s cap; requests paused until "
                           "it passes", status=429, reason="rate_limited")

    def _rate_limit_delay(self, exc: ApiError, attempt: int) -> float:
        """Seconds to sleep before retrying a 429: its Retry-After with a little jitter, else backoff."""
        wait = exc.retry_after
        delay = wait * random.uniform(1.0, 1.25) if wait is not None else self._retries.backoff(attempt)
        self._telemetry.waited(delay)
        return delay

    def _check_pause(self) -> None:
        remaining = self._paused_until - self._clock()
        if remaining > 0:
            raise ApiError("rate_limit", f"requests paused {remaining:.0f}s more after a long Retry-After",
                           status=429, reason="rate_limited")


def error_of(body: Any, status: int, answer: Answer) -> tuple[str, str]:
    """(code, message) of an error answer: OAuthError, ApiError (first item) or just the HTTP status."""
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(body.get("error"), str) and not isinstance(errors, list):
            return body["error"] or f"http_{status}", str(body.get("error_description") or "")[:200]
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = first.get("code")
            if isinstance(code, str) and code:
                return code, str(first.get("message") or "")[:200]
    return f"http_{status}", _shape_hint(answer, body)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds (fractions tolerated) or an HTTP date; None if unusable."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _shape_hint(answer: Answer, body: Any) -> str:
    if body is None:
        return f"HTTP {answer.status}, {answer.content_type()}, not JSON ({len(answer.body)} bytes)"
    return f"HTTP {answer.status}, JSON {type(body).__name__} without a data list"
