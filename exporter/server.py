"""HTTP: /metrics (pre-rendered bytes, gzip when the Accept-Encoding weights ask), / (landing page), /healthz,
/ready, POST /-/reload. Knows neither API."""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from exporter import __version__
from exporter.collector import ExporterFaults
from exporter.exposition import Exposition
from exporter.log import mask
from exporter.render import CONTENT_TYPE
from exporter.snapshot import Store
from exporter.webwatch import LiveWebConfig

log = structlog.get_logger()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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

    async def landing(_request: web.Request) -> web.Response:
        return web.Response(text=_landing_page(store, sources or []), content_type="text/html")

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def ready(_request: web.Request) -> web.Response:
        if store.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: a source has not completed its first cycle\n")

    async def reload_config(_request: web.Request) -> web.Response:
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
