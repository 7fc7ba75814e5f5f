"""One background loop per source: interval, cycle deadline, backoff after failures, keep-last-good."""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib

import structlog
from structlog.contextvars import bound_contextvars

from exporter.errors import FailureReason, SourceFailure
from exporter.snapshot import SourceKey, Store
from exporter.sources import Source

log = structlog.get_logger()


class SourceLoop:
    """Runs `source.collect()` every `interval` and records the outcome in the store.

    A failed cycle leaves the last good data in place; consecutive failures stretch the wait
    (interval x 2^n, capped at `max_backoff`) so a broken API is not hammered.

    The first cycle runs at once; the second waits `phase` of an interval more, once, so that the sources of
    one process (100 portals at the same interval) do not all collect in the same second of every interval.
    By default `phase` is a fraction in [0, 1) fixed by the source's key, so a restart keeps the slots.
    """

    def __init__(self, source: Source, store: Store, *, max_backoff: float = 300.0,
                 phase: float | None = None) -> None:
        self.source = source
        self.store = store
        self.key = SourceKey(source.source, source.target)
        self.max_backoff = max(max_backoff, source.interval)
        self.phase = spread(self.key) if phase is None else phase
        self.failures = 0
        self.cycles = 0
        self.cycle_started: float | None = None  # time.monotonic() when the latest cycle began
        self.in_cycle = False
        self._warned_bound = False

    async def run(self, stop: asyncio.Event, first_delay: float = 0.0) -> None:
        """Cycles until `stop`; the first after `first_delay` (a source a reload replaced keeps its schedule)."""
        with bound_contextvars(source=self.key.source, target=self.key.target):
            if first_delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), first_delay)
            # a source starts at once, then keeps its own slot in the interval (many portals do not cycle together)
            phase = 0.0 if first_delay > 0 else self.phase * self.source.interval
            while not stop.is_set():
                started = time.monotonic()
                await self.run_once()
                delay, phase = self._next_delay() + phase, 0.0
                remaining = delay - (time.monotonic() - started)
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), remaining)

    async def run_once(self) -> bool:
        """One cycle with its deadline; True when it succeeded. Every event logged inside it, by this
        loop, the source, its client or a task they start, names `source` and `target`."""
        with bound_contextvars(source=self.key.source, target=self.key.target):
            self.cycle_started, self.in_cycle = time.monotonic(), True
            try:
                return await self._cycle()
            finally:
                self.in_cycle = False

    async def _cycle(self) -> bool:
        started = time.monotonic()
        src, key = self.source, self.key
        try:
            result = await asyncio.wait_for(src.collect(), src.cycle_timeout)
        except SourceFailure as exc:
            self._failed(exc.reason, exc.detail, started)
            return False
        except TimeoutError:
            self._failed("deadline", f"cycle did not finish within {src.cycle_timeout:g}s", started)
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not an API fault: log it loudly, keep serving
            log.exception("cycle_crashed", error=repr(exc))
            self._failed("internal", type(exc).__name__, started, logged=True)
            return False
        duration = time.monotonic() - started
        bound = src.cycle_bound(result.calls)
        self.store.succeeded(key, result.data, duration, bound)
        self.failures = 0
        self.cycles += 1
        log.info("cycle_done", duration_s=round(duration, 3), requests=result.calls, **result.data.summary())
        if bound > src.interval and not self._warned_bound:
            self._warned_bound = True
            log.warning("cycle_bound_exceeds_interval", bound_s=round(bound, 1), interval_s=src.interval,
                        hint="the API rate limit makes a cycle longer than the interval; raise the interval")
        return True

    def _failed(self, reason: FailureReason, detail: str, started: float, logged: bool = False) -> None:
        duration = time.monotonic() - started
        self.failures += 1
        self.cycles += 1
        self.store.failed(self.key, reason, detail, duration)
        if not logged:
            log.warning("cycle_failed", reason=reason, detail=detail, duration_s=round(duration, 3),
                        consecutive_failures=self.failures)

    def _next_delay(self) -> float:
        if self.failures == 0:
            return self.source.interval
        return float(min(self.max_backoff, self.source.interval * 2 ** (self.failures - 1)))


def spread(key: SourceKey) -> float:
    """A fraction of the interval in [0, 1), the same for a source across restarts."""
    return zlib.crc32(f"{key.source}/{key.target}".encode()) / 2**32
