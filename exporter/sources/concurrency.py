"""Running several requests at once without leaving any behind when a cycle ends early."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


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
