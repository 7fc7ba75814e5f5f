"""Wires config -> sources -> store -> collector -> HTTP, and runs them until asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from exporter.collector import ExporterFaults, SnapshotCollector
from exporter.config import Config
from exporter.errors import ExporterError
from exporter.exposition import Exposition
from exporter.log import mask, register_secrets
from exporter.scheduler import SourceLoop
from exporter.server import build_app
from exporter.snapshot import SourceKey, Store
from exporter.sources import Source
from exporter.sources.bitrix24 import Bitrix24Source
from exporter.webconfig import WebConfig

DEFAULT_PORT = 10057
log = structlog.get_logger()


def build_sources(config: Config, store: Store) -> list[Source]:
    """One source per configured portal and workspace, each with its own telemetry in the store."""
    sources: list[Source] = []
    for b24 in config.bitrix24:
        register_secrets(b24.secrets)
        sources.append(Bitrix24Source(b24, store.register(SourceKey("bitrix24", b24.name), b24.interval)))
    for pc in config.pachca:
        from exporter.sources.pachca import PachcaSource

        register_secrets(pc.secrets)
        sources.append(PachcaSource(pc, store.register(SourceKey("pachca", pc.name), pc.interval)))
    return sources


def _addresses(config: Config) -> list[tuple[str, str, str]]:
    return ([("bitrix24", c.name, c.masked_url) for c in config.bitrix24]
            + [("pachca", c.name, c.base_url) for c in config.pachca])


class Exporter:
    """The running exporter. `async with Exporter(...) as exp:` serves on `exp.url` until the block ends.

    `sources` replaces the ones built from `config` (tests inject sources with fast retry policies;
    they must be registered in the same `store`, so pass `store` too).
    """

    def __init__(self, config: Config, host: str = "0.0.0.0", port: int = DEFAULT_PORT,
                 web_config: WebConfig | None = None, *, max_backoff: float = 300.0,
                 sources: list[Source] | None = None, store: Store | None = None) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.web_config = web_config
        self.store = store or Store()
        self.sources = build_sources(config, self.store) if sources is None else sources
        self.loops = [SourceLoop(s, self.store, max_backoff=max_backoff) for s in self.sources]
        faults = ExporterFaults()
        collector = SnapshotCollector(self.store, faults, people=config.people)
        self.exposition = Exposition(collector.snapshot_families, collector.live_families, faults=faults)
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Exporter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self.exposition.render_now()
        self.store.on_change(self.exposition.invalidate)
        app = build_app(self.store, self.exposition, self.web_config, _addresses(self.config))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        sock = _listen(self.host, self.port)
        ssl_ctx = self.web_config.ssl_context() if self.web_config else None
        await web.SockSite(self._runner, sock, ssl_context=ssl_ctx).start()
        bound_host, bound_port = sock.getsockname()[:2]
        scheme = "https" if ssl_ctx else "http"
        shown = "127.0.0.1" if bound_host in ("0.0.0.0", "::") else bound_host
        self.url = f"{scheme}://{shown}:{bound_port}"
        self.port = bound_port
        log.info("listening", address=f"{bound_host}:{bound_port}", tls=bool(ssl_ctx),
                 basic_auth=bool(self.web_config and self.web_config.has_auth),
                 sources=[f"{s}/{t} {mask(a)}" for s, t, a in _addresses(self.config)])
        self._tasks = [asyncio.create_task(loop.run(self.stop), name=f"{loop.key.source}:{loop.key.target}")
                       for loop in self.loops]

    async def close(self) -> None:
        self.stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for source in self.sources:
            await source.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("stopped")


class ListenError(ExporterError):
    """The listen address cannot be bound (in use, not this host's, not resolvable): a user's problem."""

    def __init__(self, address: str, detail: str) -> None:
        super().__init__(f"cannot listen on {address}: {detail}")
        self.address = address
        self.detail = detail


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"{host}:{port}", exc.strerror or str(exc)) from exc
    return sock


@contextlib.asynccontextmanager
async def running(config: Config, **kwargs: object) -> AsyncIterator[Exporter]:
    """Test and demo helper: an exporter on a free loopback port."""
    kwargs.setdefault("host", "127.0.0.1")
    kwargs.setdefault("port", 0)
    async with Exporter(config, **kwargs) as exporter:  # type: ignore[arg-type]
        yield exporter
