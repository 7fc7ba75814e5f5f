"""HTTP: /metrics (pre-rendered bytes), / (landing page), /healthz, /ready, POST /-/reload. Knows neither API."""

from __future__ import annotations

import asyncio
import ctypes
import html
import math
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter import __version__
from exporter.collector import ExporterFaults, Family, render
from exporter.log import mask
from exporter.snapshot import Store
from exporter.webwatch import LiveWebConfig

log = structlog.get_logger()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# What collector.render writes, whatever prometheus_client.CONTENT_TYPE_LATEST says in the installed
# release (version=1.0.0 in recent ones, 0.0.4 in the older ones the pin allows)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REPORTED_LIMIT = 64  # distinct render errors remembered for log-once


class Exposition:
    """The text exposition of the current snapshot, rendered once per change and served as bytes.

    A scrape then costs the same at 100 series and at 100,000. The few series that move by themselves
    (API traffic during a long cycle, process metrics) are rendered at most once a second and appended
    (when compressed, by continuing a copy of the body's gzip compressor: one stream, cheap per scrape).
    A render that raises is a bug: it is counted in `faults`, logged once per distinct error, and the
    last good text goes on being served.
    """

    def __init__(self, render: Callable[[], bytes], render_live: Callable[[], bytes] = bytes,
                 live_ttl: float = 1.0, faults: ExporterFaults | None = None) -> None:
        self._render = render
        self._render_live = render_live
        self.faults = faults or ExporterFaults()
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
        self._reported: dict[tuple[str, str, str], None] = {}
        self.renders = 0

    def render_now(self) -> None:
        body = self._render()
        # gzip the body once and keep the compressor, flushed to a byte boundary: each scrape continues a
        # copy of it with the live part, so the answer is one gzip stream at the cost of the small part
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        packed = compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH)
        self._live_cache = (-math.inf, self._live_cache[1])  # a cycle ended: its traffic counts belong with it
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
            try:
                await asyncio.to_thread(self.render_now)
            except Exception as exc:
                self._render_failed("snapshot", exc)

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
            try:
                plain = self._render_live() + render(_process_families(self._live))
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


def _process_families(registry: CollectorRegistry) -> Iterator[Family]:
    """The process, platform and GC collectors as families for collector.render.

    prometheus_client's own generate_latest follows the library's release (recent ones gained name escaping
    schemes and call their text version 1.0.0), so its text is not bound to the 0.0.4 our Content-Type
    promises. These collectors yield gauges and counters only; anything else is refused, not written wrong.
    """
    for metric in registry.collect():
        if metric.type not in ("gauge", "counter"):
            raise ValueError(f"{metric.name}: a {metric.type} has no place in this writer")
        exposed = metric.name + "_total" if metric.type == "counter" else metric.name
        samples = [s for s in metric.samples if s.name == exposed]  # drops OpenMetrics-only _created
        labels = sorted(samples[0].labels) if samples else []
        if any(sorted(s.labels) != labels for s in samples):
            raise ValueError(f"{metric.name}: samples with different label names")
        yield Family(metric.name, metric.documentation, labels, metric.type,
                     [([s.labels[k] for k in labels], s.value) for s in samples])


_QVALUE = re.compile(r"(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)")


def coding_weights(accept_encoding: str) -> dict[str, float]:
    """Content-coding -> weight from an Accept-Encoding value (RFC 9110, 12.5.3 and 12.4.2).

    `gzip;q=0.5, identity;q=0` -> {"gzip": 0.5, "identity": 0.0}. Names are lower-cased; a member with
    a malformed weight is dropped, as if it were absent.
    """
    weights: dict[str, float] = {}
    for member in accept_encoding.split(","):
        coding, *params = (part.strip() for part in member.split(";"))
        if not coding:
            continue  # empty list elements are allowed
        weight: float | None = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                weight = float(value) if _QVALUE.fullmatch(value) else None
        if weight is not None:
            coding = coding.lower()
            weights[coding] = max(weight, weights.get(coding, 0.0))
    return weights


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether to answer with gzip: it (or x-gzip, or `*`) has a weight above 0 and is not less wanted than
    an explicitly weighted identity. No header: no gzip (RFC 9110 allows any coding; plain is safest)."""
    if not accept_encoding:
        return False
    weights = coding_weights(accept_encoding)
    gzip = weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0)))
    identity = weights.get("identity")
    return gzip > 0 and (identity is None or gzip >= identity)


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


def build_app(store: Store, exposition: Exposition, web_config: LiveWebConfig | None = None,
              sources: list[tuple[str, str, str]] | None = None,
              reload: Callable[[], Awaitable[list[str]]] | None = None) -> web.Application:
    """The exporter's web application; `sources` lists (source, target, masked address) for `/`; `reload`
    serves POST /-/reload (the problems when the new config is refused, one per line, else []).

    A handler that raises is a bug: counted in `exposition.faults`, logged with its traceback, answered 500.
    """
    app = web.Application(client_max_size=16 * 1024, middlewares=[_error_middleware(exposition.faults)])
    if web_config is not None:
        app.middlewares.append(web_config.middleware())
        app.on_response_prepare.append(web_config.add_headers)

    async def metrics(request: web.Request) -> web.StreamResponse:
        compressed = accepts_gzip(request.headers.get("Accept-Encoding"))
        headers = {"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store", "Vary": "Accept-Encoding"}
        if compressed:
            headers["Content-Encoding"] = "gzip"
        parts = exposition.parts(compressed)
        response = web.StreamResponse(headers=headers)
        response.content_length = sum(len(part) for part in parts)
        await response.prepare(request)
        try:
            if request.method != "HEAD":
                for part in parts:
                    await response.write(part)
            await response.write_eof()
        except ConnectionError as exc:  # the scraper went away (its timeout): not our fault, nothing to send
            log.debug("scrape_aborted", detail=str(exc))
        return response

    async def landing(request: web.Request) -> web.Response:
        return web.Response(text=_landing_page(store, sources or []), content_type="text/html")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def ready(request: web.Request) -> web.Response:
        if store.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: a source has not completed its first cycle\n")

    async def reload_config(request: web.Request) -> web.Response:
        assert reload is not None
        problems = await reload()
        if problems:
            return web.Response(status=400, text="".join(f"{line}\n" for line in problems))
        return web.Response(text="config reloaded\n")

    for path, handler in (("/metrics", metrics), ("/", landing), ("/healthz", healthz), ("/ready", ready)):
        app.router.add_get(path, handler)  # GET also answers HEAD; other methods get 405
    if reload is not None:
        app.router.add_post("/-/reload", reload_config)  # POST only, as in Prometheus; others get 405
    return app


def _error_middleware(faults: ExporterFaults) -> Middleware:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except (web.HTTPException, ConnectionError):
            raise  # an answer (404, 405...), or the client hung up (aiohttp logs it, at debug: exporter/log.py)
        except Exception as exc:
            faults.handler_failures += 1
            log.error("request_failed", method=request.method, path=request.path,
                      error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            if request.writer.output_size > 0 and request.transport is not None:
                request.transport.close()  # part of the answer is out: cut it so the client sees it short
            return web.Response(status=500, text="internal error (logged as request_failed)\n")

    return errors


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
