"""What both API clients do around HTTP requests: wait for the rate limit, map network faults, and run
several at once without leaving any behind when a cycle ends early."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import httpx

from exporter.errors import ApiError
from exporter.ratelimit import LeakyBucket
from exporter.snapshot import ApiTelemetry

T = TypeVar("T")


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


async def as_they_finish(aws: Iterable[Awaitable[T]]) -> AsyncGenerator[T, None]:
    """Results in the order they finish. Leaving early (an error, the cycle's deadline, shutdown) cancels
    what is still running, so a failed cycle sends nothing more; use it inside contextlib.aclosing."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        for next_done in asyncio.as_completed(tasks):
            yield await next_done
    finally:
        await _cancel(tasks)


async def all_or_none(aws: Iterable[Awaitable[T]]) -> list[T]:
    """asyncio.gather that, when one fails or the caller is cancelled, cancels the others too."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        await _cancel(tasks)


async def _cancel(tasks: Sequence[asyncio.Future[T]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # collect them: no "exception never retrieved"
