"""What both API clients do around HTTP requests: wait for the rate limit, send within a timeout, decide
whether a fault is worth another try, and run several requests at once without leaving any behind when a
cycle ends early."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import httpx

from exporter.errors import ApiError
from exporter.ratelimit import LeakyBucket
from exporter.snapshot import ApiTelemetry

T = TypeVar("T")

NO_ANSWER_CODES = frozenset({"timeout", "network_error"})  # the ApiError codes of timed_send


async def pace(bucket: LeakyBucket, telemetry: ApiTelemetry) -> None:
    """Wait for room in the client-side bucket. This is pacing, not a fault: it happens before the request
    is sent, so it counts neither against the request's timeout nor against its retry budget."""
    waited = await bucket.acquire()
    if waited:
        telemetry.waited(waited)


async def timed_send(telemetry: ApiTelemetry, method: str, send: Callable[[], Awaitable[httpx.Response]],
                     timeout: float) -> httpx.Response:
    """Send with `timeout` seconds for the whole exchange (httpx's own timeouts are per phase, so a server
    that trickles bytes would never trip them); timeouts and network errors become retryable ApiErrors."""
    try:
        async with asyncio.timeout(timeout):
            return await send()
    except (httpx.TimeoutException, TimeoutError):
        telemetry.request(method, "timeout")
        raise ApiError("timeout", f"no answer within {timeout:g}s", retryable=True) from None
    except httpx.HTTPError as exc:
        telemetry.request(method, "network_error")
        raise ApiError("network_error", type(exc).__name__, retryable=True) from None


class FaultRetries:
    """Whether a request that failed with a fault other than a rate limit (a timeout, a network error, a 5xx,
    an unreadable answer) is tried again. Rate-limit answers are not faults and keep their own rules.

    A request gets at most `attempts` tries, and no retry that could end more than `budget` seconds after its
    first try began, counting the failed tries and the backoff between them (pacing and rate-limit waits are
    not counted). With timeout 10 s and budget 30 s a request that meets a hang is tried exactly twice.

    Once a request has given up because the API did not answer at all, later requests are tried once until
    an answer (of any kind) arrives: a cycle that goes on after a failed call does not pay for retries twice.
    """

    def __init__(self) -> None:
        self.unanswered = False

    def answered(self) -> None:
        self.unanswered = False

    def retry(self, exc: ApiError, tries: int, spent: float, *, attempts: int, budget: float,
              timeout: float) -> bool:
        """After `tries` failed tries and `spent` seconds of them and of backoff including the next delay:
        True when one more try (which may take all of `timeout`) is allowed."""
        no_answer = exc.code in NO_ANSWER_CODES
        if not no_answer:
            self.unanswered = False
        if (exc.retryable and not (no_answer and self.unanswered) and tries < attempts
                and spent + timeout <= budget):
            return True
        self.unanswered = self.unanswered or no_answer
        return False


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
