"""The /metrics body, rendered once per snapshot change and served as bytes (plain or one gzip stream)."""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import itertools
import math
import time
from collections.abc import Callable, Hashable, Iterable

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter.collector import ExporterFaults
from exporter.incremental import EMPTY, Body, IncrementalRenderer
from exporter.render import Section, from_prometheus_client, render

log = structlog.get_logger()
_REPORTED_LIMIT = 64  # distinct render errors remembered for log-once


class Exposition:
    """The text exposition of the current snapshot, rendered once per change and served as bytes.

    A scrape then costs the same at 100 series and at 100,000. A render re-makes only what changed since the
    last one (exporter/incremental.py): after one of 100 portals' cycles, a few ms instead of a whole render of
    146,000 series (~0.7 s). The few series that move by themselves (`live`: API traffic during a long cycle;
    process metrics) are rendered at most once a second and appended (when compressed, as the end of the
    body's gzip stream: one stream, cheap per scrape).
    A render that raises is a bug: it is counted in `faults`, logged once per distinct error, and the
    last good text goes on being served.

    Renders are paced so that they take at most `render_share` of one core: after a render that used d
    seconds of CPU, the next one starts no sooner than d / render_share seconds after it began (and never
    more than `max_render_gap` after); changes meanwhile are coalesced into that one render. A render that
    costs 5 ms follows every change within a quarter of a second; one that must make everything afresh
    (all 100 portals' first cycles) holds the next back for as long as it is costly.
    The cost is the render thread's CPU time, not its wall time: on a loaded machine a render waits for a
    core (or the GIL) without costing anything, and wall time would push the next render ever further away.
    """

    def __init__(self, snapshot: Callable[[], Iterable[Section]], live: Callable[[], Iterable[Section]] = tuple,
                 live_ttl: float = 1.0, faults: ExporterFaults | None = None, *, render_share: float = 0.02,
                 max_render_gap: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._snapshot = snapshot
        self._live = live
        self.faults = faults or ExporterFaults()
        self._process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._process)
        PlatformCollector(registry=self._process)
        GCCollector(registry=self._process)
        self._renderer = IncrementalRenderer()
        self._rendered: Body = EMPTY
        self._live_ttl = live_ttl
        self._live_cache: tuple[float, bytes] = (-math.inf, b"")
        # the gzip tail (the live part, continuing the body's stream) for one (body, live part) pair: with many
        # sources the live part is ~100 KB, too much to compress again for each scrape
        self._tail: tuple[object, bytes, bytes] = (None, b"", b"")
        self._dirty = True
        self._rendering: asyncio.Task[None] | None = None
        self._render_share = render_share
        self._max_render_gap = max_render_gap
        self._clock = clock
        self._next_render = -math.inf
        self.render_seconds = 0.0  # the CPU time the last paced render took, in its worker thread
        self.render_seconds_total = 0.0  # and all paced renders so far
        self._reported: dict[tuple[str, str, str], None] = {}
        self.renders = 0

    def render_now(self) -> None:
        body = self._renderer.render(self._snapshot())
        self._live_cache = (-math.inf, self._live_cache[1])  # a cycle ended: its traffic counts belong with it
        self._rendered = body
        self.renders += 1
        _release_free_memory()

    @property
    def made(self) -> dict[tuple[str, Hashable], int]:
        """What the last render made afresh: parts per shard (group name, source key); it reused the others."""
        return self._renderer.made

    def invalidate(self) -> None:
        """Called from the event loop when the store changes; re-renders in a worker thread."""
        self._dirty = True
        if self._rendering is None or self._rendering.done():
            # in a context of its own: the change may come from a source's cycle, whose `source`/`target` log
            # context must not label what the render logs (it renders every source)
            self._rendering = asyncio.get_running_loop().create_task(self._render_loop(),
                                                                      context=contextvars.Context())

    async def _render_loop(self) -> None:
        while self._dirty:
            wait = self._next_render - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)  # changes meanwhile join this render
            self._dirty = False
            began = self._clock()
            cost: list[float] = []
            try:
                await asyncio.to_thread(self._render_costed, cost)
            except Exception as exc:
                self._render_failed("snapshot", exc)
            self.render_seconds = sum(cost)
            self.render_seconds_total += self.render_seconds
            self._next_render = began + min(self.render_seconds / self._render_share, self._max_render_gap)

    def _render_costed(self, cost: list[float]) -> None:
        """render_now, appending the CPU time it used in this thread to `cost` (also when it raises)."""
        started = time.thread_time()
        try:
            self.render_now()
        finally:
            cost.append(time.thread_time() - started)

    def parts(self, compressed: bool) -> tuple[bytes, ...]:
        """The answer as pieces to send one after the other without copying: the pre-rendered body's, then the
        live part's (compressed: the body's gzip stream, then its end with the live part)."""
        body = self._rendered
        live = self._live_part()
        if not compressed:
            return (*body.chunks(), live)
        made_for, made_from, tail = self._tail
        if made_for is not body or made_from is not live:
            tail = body.tail(live)
            self._tail = (body, live, tail)
        return body.packed, tail

    def _live_part(self) -> bytes:
        """API traffic and process metrics, re-read at most once per `live_ttl`."""
        at, plain = self._live_cache
        now = time.monotonic()
        if now - at >= self._live_ttl:
            try:
                plain = render(itertools.chain(self._live(), from_prometheus_client(self._process.collect())))
            except Exception as exc:  # keep the last good live part
                self._render_failed("live", exc)
            self._live_cache = (now, plain)
        return plain

    def _render_failed(self, part: str, exc: Exception) -> None:
        """Count every failure; log each distinct one once (a bug repeats at every change otherwise)."""
        self.faults.render_failures += 1
        self._live_cache = (-math.inf, self._live_cache[1])  # show the count at the next scrape
        key = (part, type(exc).__name__, str(exc))
        if key in self._reported:
            return
        self._reported[key] = None
        if len(self._reported) > _REPORTED_LIMIT:
            del self._reported[next(iter(self._reported))]
        log.error("render_failed", part=part, error=f"{type(exc).__name__}: {exc}",
                  hint="serving the last good /metrics; this error is logged once", exc_info=exc)


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None


_malloc_trim = _load_malloc_trim()


def _release_free_memory() -> None:
    """A cycle and its render free tens of MB at 5,000 users; glibc keeps such freed heap pages mapped
    unless asked, and resident memory would settle at the peak instead of at what is in use."""
    if _malloc_trim is not None:
        _malloc_trim(0)
