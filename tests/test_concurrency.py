"""How a wave of requests runs at once: results in finishing order, nothing held or left running after."""

from __future__ import annotations

import asyncio
import gc
import weakref
from contextlib import aclosing

from exporter.sources.concurrency import as_they_finish


class Answer:
    """Stands for a decoded batch answer (weakref-able, unlike a dict)."""


async def test_answers_come_in_the_order_they_finish() -> None:
    async def after(delay: float, name: str) -> str:
        await asyncio.sleep(delay)
        return name

    async with aclosing(as_they_finish([after(0.05, "slow"), after(0.0, "fast")])) as answers:
        assert [a async for a in answers] == ["fast", "slow"]


async def test_answers_already_handed_over_are_not_kept() -> None:
    """A 500-batch wave must not hold every answer until its last one (~28 MB at 5,000 users)."""
    async def answer() -> Answer:
        await asyncio.sleep(0)
        return Answer()

    handed: list[weakref.ref[Answer]] = []
    async with aclosing(as_they_finish(answer() for _ in range(20))) as answers:
        async for latest in answers:
            handed.append(weakref.ref(latest))
            del latest
            gc.collect()
            assert sum(ref() is not None for ref in handed) <= 1
    assert len(handed) == 20


async def test_leaving_early_cancels_what_is_still_running() -> None:
    never = asyncio.Event()

    async def first() -> str:
        return "first"

    async def hanging() -> str:
        await never.wait()
        return "never"

    started: list[asyncio.Task[str]] = []

    async def tracked() -> str:
        task = asyncio.current_task()
        assert task is not None
        started.append(task)
        return await hanging()

    async with aclosing(as_they_finish([first(), tracked()])) as answers:
        async for answer in answers:
            assert answer == "first"
            break
    assert started
    assert started[0].cancelled()
