"""How both API clients send one request: wait for the client-side rate limit, send within a timeout, and
count what came back. A missing answer and a redirect become ApiErrors here, before any decoding."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from exporter.errors import ApiError
from exporter.ratelimit import LeakyBucket
from exporter.snapshot import ApiTelemetry


async def pace(bucket: LeakyBucket, telemetry: ApiTelemetry) -> None:
    """Wait for room in the client-side bucket. This is pacing, not a fault: it happens before the request
    is sent, so it counts neither against the request's timeout nor against its retry budget."""
    waited = await bucket.acquire()
    if waited:
        telemetry.waited(waited)


async def timed_send(telemetry: ApiTelemetry, method: str, send: Callable[[], Awaitable[httpx.Response]],
                     timeout: float) -> httpx.Response:  # noqa: ASYNC109 (the timeout becomes a counted ApiError here)
    """Send with `timeout` seconds for the whole exchange (httpx's own timeouts are per phase, so a server
    that trickles bytes would never trip them); timeouts and network errors become retryable ApiErrors, a
    redirect a final one (`redirected`)."""
    try:
        async with asyncio.timeout(timeout):
            response = await send()
    except (httpx.TimeoutException, TimeoutError):
        telemetry.request(method, "timeout")
        raise ApiError("timeout", f"no answer within {timeout:g}s", retryable=True) from None
    except httpx.HTTPError as exc:
        telemetry.request(method, "network_error")
        raise ApiError("network_error", type(exc).__name__, retryable=True) from None
    if 300 <= response.status_code < 400:
        raise refused(telemetry, method, redirected(response))
    return response


def refused(telemetry: ApiTelemetry, method: str, error: ApiError) -> ApiError:
    """Count an answer that is an error, by its reason and its code; returns the error for the caller to raise."""
    telemetry.request(method, error.reason)
    telemetry.error(error.code)
    return error


def redirected(response: httpx.Response) -> ApiError:
    """A 3xx answer, which is never followed: the request carries its credential (the Bitrix24 webhook secret
    in the path, the Pachca token in a header), and following would send it to whatever host the Location
    names (docs/api-notes.md#b24-webhook-url). The error names that host, never the Location's path."""
    status = response.status_code
    location = response.headers.get("location")
    try:
        host = response.request.url.join(location).host if location else ""
    except (httpx.InvalidURL, ValueError):
        host = ""
    where = f"to {host}" if host else "without a usable Location"
    return ApiError(f"http_{status}", f"HTTP {status} redirect {where}, not followed (it would carry the "
                    "credentials there); if the address moved, update the config", status=status,
                    reason="api_error")
