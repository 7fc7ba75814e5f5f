"""What both API clients do around one HTTP request: wait for the rate limit, map network faults."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from exporter.errors import ApiError
from exporter.ratelimit import LeakyBucket
from exporter.snapshot import ApiTelemetry


async def paced_send(bucket: LeakyBucket, telemetry: ApiTelemetry, method: str,
                     send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """Take a slot in the bucket, send, and turn timeouts and network errors into retryable ApiErrors."""
    waited = await bucket.acquire()
    if waited:
        telemetry.waited(waited)
    try:
        return await send()
    except httpx.TimeoutException:
        telemetry.request(method, "timeout")
        raise ApiError("timeout", "request timed out", retryable=True) from None
    except httpx.HTTPError as exc:
        telemetry.request(method, "network_error")
        raise ApiError("network_error", type(exc).__name__, retryable=True) from None
