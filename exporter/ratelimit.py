"""Client-side leaky bucket that mirrors a server's, so that steady state never meets a rate-limit answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class LeakyBucket:
    """Each request adds 1 to a level that drains at `rate` per second; a request waits while it would
    push the level over `capacity`. Bitrix24 keeps the same bucket per portal (2/s, 50 on plain plans).

    One unit of headroom is kept below the server's capacity because the server counts a request when it
    arrives, not when we send it, and latency jitter can make its level briefly higher than ours.
    """

    def __init__(self, rate: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, capacity - 1.0)
        self._clock = clock
        self._level = 0.0
        self._updated = clock()
        self._lock = asyncio.Lock()

    @property
    def level(self) -> float:
        self._drain()
        return self._level

    async def acquire(self) -> float:
        """Wait for room for one request; returns the seconds spent waiting. FIFO among waiters."""
        waited = 0.0
        async with self._lock:
            while True:
                self._drain()
                if self._level + 1.0 <= self.capacity:
                    self._level += 1.0
                    return waited
                delay = (self._level + 1.0 - self.capacity) / self.rate
                await asyncio.sleep(delay)
                waited += delay

    def take_over(self, previous: LeakyBucket) -> None:
        """Continue from the level of the bucket this one replaces (a config reload replaced the client of
        the same portal): the portal has seen those requests, so the new client must not spend them again."""
        self._drain()
        self._level = max(self._level, previous.level)

    def saturate(self) -> None:
        """The server said we are over its limit (someone else shares the bucket): assume it is full."""
        self._drain()
        self._level = max(self._level, self.capacity)

    def _drain(self) -> None:
        now = self._clock()
        self._level = max(0.0, self._level - (now - self._updated) * self.rate)
        self._updated = now


def cycle_bound(calls: int, rate: float, burst: int) -> float:
    """The least time in seconds a bucket of (rate, burst) allows for `calls` requests from empty."""
    return max(0.0, calls - burst) / rate
