"""HTTP: /metrics (pre-rendered bytes), / (landing page), /healthz, /ready. Knows neither API."""

from __future__ import annotations

import asyncio
import ctypes
import html
import math
import time
import zlib
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter import __version__
from exporter.log import mask
from exporter.snapshot import Store
from exporter.webconfig import WebConfig

log = structlog.get_logger()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Exposition:
    """The text exposition of the current snapshot, rendered once per change and served as bytes.

    A scrape then costs the same at 100 series and at 100,000. The few series that move by themselves
    (API traffic during a long cycle, process metrics) are rendered at most once a second and appended
    (when compressed, by continuing a copy of the body's gzip compressor: one stream, cheap per scrape).
    """

    def __init__(self, render: Callable[[], bytes], render_live: Callable[[], bytes] = bytes,
                 live_ttl: float = 1.0) -> None:
        self._render = render
        self._render_live = render_live
        self._live = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._live)
        PlatformCollector(registry=self._live)
        GCCollector(registry=self._live)
        # (text, its gzip flushed to a byte boundary, the compressor that made it): swapped as one value
        self._rendered: tuple[bytes, bytes, zlib._Compress] = (b"", b"", zlib.compressobj(6, zlib.DEFLATED, 31))
        self._live_ttl = live_ttl
        self._live_cache: tuple[float, bytes] = (-math.inf, b"")
        self._dirty = True
        self._rendering: asyncio.Task[None] | None = None
        self.renders = 0

    def render_now(self) -> None:
        body = self._render()
        # gzip the body once and keep the compressor, flushed to a byte boundary: each scrape continues a
        # copy of it with the live part, so the answer is one gzip stream at the cost of the small part
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        packed = compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH)
        self._live_cache = (-math.inf, b"")  # a cycle ended: its traffic counts belong with it
        self._rendered = (body, packed, compressor)
        self.renders += 1
        _release_free_memory()

    def invalidate(self) -> None:
        """Called from the event loop when the store changes; re-renders in a worker thread."""
        self._dirty = True
        if self._rendering is None or self._rendering.done():
            self._rendering = asyncio.get_running_loop().create_task(self._render_loop())

    async def _render_loop(self) -> None:
        while self._dirty:
            self._dirty = False
            await asyncio.to_thread(self.render_now)

    def parts(self, compressed: bool) -> tuple[bytes, bytes]:
        """The answer as (pre-rendered part, live part), sent one after the other without copying."""
        body, packed, compressor = self._rendered
        live = self._live_part()
        if not compressed:
            return body, live
        tail = compressor.copy()
        return packed, tail.compress(live) + tail.flush()

    def _live_part(self) -> bytes:
        """API traffic and process metrics, re-read at most once per `live_ttl`."""
        at, plain = self._live_cache
        now = time.monotonic()
        if now - at >= self._live_ttl:
            plain = self._render_live() + generate_latest(self._live)
            self._live_cache = (now, plain)
        return plain


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


def build_app(store: Store, exposition: Exposition, web_config: WebConfig | None = None,
              sources: list[tuple[str, str, str]] | None = None) -> web.Application:
    """The exporter's web application; `sources` lists (source, target, masked address) for `/`."""
    app = web.Application(client_max_size=16 * 1024)
    if web_config and web_config.has_auth:
        app.middlewares.append(web_config.middleware())

    async def metrics(request: web.Request) -> web.StreamResponse:
        compressed = "gzip" in request.headers.get("Accept-Encoding", "")
        headers = {"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
        if compressed:
            headers["Content-Encoding"] = "gzip"
        parts = exposition.parts(compressed)
        response = web.StreamResponse(headers=headers)
        response.content_length = sum(len(part) for part in parts)
        await response.prepare(request)
        if request.method != "HEAD":
            for part in parts:
                await response.write(part)
        await response.write_eof()
        return response

    async def landing(request: web.Request) -> web.Response:
        return web.Response(text=_landing_page(store, sources or []), content_type="text/html")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def ready(request: web.Request) -> web.Response:
        if store.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: a source has not completed its first cycle\n")

    for path, handler in (("/metrics", metrics), ("/", landing), ("/healthz", healthz), ("/ready", ready)):
        app.router.add_get(path, handler)  # GET also answers HEAD; other methods get 405
    return app


def _landing_page(store: Store, sources: list[tuple[str, str, str]]) -> str:
    status = {(s.key.source, s.key.target): s for s in store.states()}
    rows = []
    for source, target, address in sources:
        state = status.get((source, target))
        up = "up" if state and state.up else ("waiting" if state and state.last_duration is None else "down")
        error = state.last_error if state else ""
        rows.append("<tr>" + "".join(f"<td>{html.escape(mask(cell))}</td>"
                                      for cell in (source, target, address, up, error)) + "</tr>")
    table = "".join(rows) or "<tr><td colspan=5>no sources configured</td></tr>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tasks-exporter</title></head>
<body>
<h1>tasks-exporter {html.escape(__version__)}</h1>
<p>Prometheus exporter for Bitrix24 task counters and Pachca reminders.</p>
<ul><li><a href="metrics">Metrics</a></li><li><a href="healthz">Health</a></li>
<li><a href="ready">Readiness</a></li></ul>
<table border="1" cellpadding="4"><tr><th>source</th><th>target</th><th>address</th><th>status</th>
<th>last error</th></tr>{table}</table>
</body></html>
"""
