"""Wires config -> sources -> store -> collector -> HTTP, and runs them until asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from exporter.collector import ConfigReloads, ExporterFaults, SnapshotCollector
from exporter.config import Bitrix24Config, Config, load_config
from exporter.errors import ExporterError
from exporter.exposition import Exposition
from exporter.heap import fix_mmap_threshold
from exporter.limits import open_files_needed, raise_open_files_limit
from exporter.log import mask, register_secrets
from exporter.reload import Reloader, SourceFleet, SourceSettings
from exporter.scheduler import SourceLoop
from exporter.server import build_app
from exporter.snapshot import SourceKey, Store
from exporter.sources import Source
from exporter.sources.bitrix24 import Bitrix24Source
from exporter.webconfig import WebConfig
from exporter.webwatch import LiveWebConfig

DEFAULT_PORT = 10057
log = structlog.get_logger()


def build_source(settings: SourceSettings, store: Store) -> Source:
    """The source of one configured portal or workspace (the fleet registers it in the store). A source that
    replaces another on a reload takes over its telemetry, so the API traffic counters go on counting."""
    register_secrets(settings.secrets)
    kind = "bitrix24" if isinstance(settings, Bitrix24Config) else "pachca"
    telemetry = store.telemetry().get(SourceKey(kind, settings.name))
    source: Source
    if isinstance(settings, Bitrix24Config):
        source = Bitrix24Source(settings, telemetry)
    else:
        from exporter.sources.pachca import PachcaSource

        source = PachcaSource(settings, telemetry)
    return source


def _addresses(config: Config) -> list[tuple[str, str, str]]:
    return ([("bitrix24", c.name, c.masked_url) for c in config.bitrix24]
            + [("pachca", c.name, c.base_url) for c in config.pachca])


class Exporter:
    """The running exporter. `async with Exporter(...) as exp:` serves on `exp.url` until the block ends.

    `sources` replaces the ones built from `config` (tests inject sources with fast retry policies); every
    source is registered in `store` (a new one unless given), which the HTTP side reads. `config_file` is what
    a reload (`reload()`, SIGHUP, POST /-/reload) reads; without it a reload re-reads only the web config.
    """

    def __init__(self, config: Config, host: str = "0.0.0.0", port: int = DEFAULT_PORT,
                 web_config: WebConfig | None = None, *, max_backoff: float = 300.0,
                 sources: list[Source] | None = None, store: Store | None = None,
                 config_file: str | None = None) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.store = Store() if store is None else store
        self.stop = asyncio.Event()
        self.fleet = SourceFleet(self.store, lambda settings: build_source(settings, self.store), self.stop,
                                 max_backoff=max_backoff)
        self.fleet.adopt(config, sources)
        self.web = LiveWebConfig(web_config) if web_config else None
        faults = ExporterFaults()
        self.reloads = ConfigReloads()
        self._collector = SnapshotCollector(self.store, faults, self.reloads, people=config.people)
        self.exposition = Exposition(self._collector.snapshot_sections, self._collector.live_families,
                                     faults=faults)
        self._addresses = _addresses(config)  # the landing page's list: changed in place by a reload
        self.reloader = Reloader((lambda: load_config(config_file)) if config_file else (lambda: self.config),
                                 self.fleet, self.reloads, web=self.web if web_config and web_config.path else None,
                                 applied=self._applied)
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def sources(self) -> list[Source]:
        return self.fleet.sources

    @property
    def loops(self) -> list[SourceLoop]:
        return self.fleet.loops

    async def reload(self, trigger: str = "call") -> list[str]:
        """Read the config (and web config) again and apply it; the problems when it was refused, else []."""
        if self.stop.is_set():
            return ["the exporter is shutting down; nothing was reloaded"]
        return await self.reloader.reload(trigger)

    def _applied(self, config: Config) -> None:
        self.config = config
        self._collector.use_people(config.people)
        self._addresses[:] = _addresses(config)
        raise_open_files_limit(open_files_needed(config))  # more portals may need more connections

    async def __aenter__(self) -> Exporter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        fix_mmap_threshold()  # the exporter is the process: its large buffers go back to the system when freed
        raise_open_files_limit(open_files_needed(self.config))
        self.exposition.render_now()
        self.store.on_change(self.exposition.invalidate)
        app = build_app(self.store, self.exposition, self.web, self._addresses, reload=self._reload_request)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        sock = _listen(self.host, self.port)
        ssl_ctx = self.web.ssl_context() if self.web else None
        await web.SockSite(self._runner, sock, ssl_context=ssl_ctx).start()
        bound_host, bound_port = sock.getsockname()[:2]
        scheme = "https" if ssl_ctx else "http"
        shown = "127.0.0.1" if bound_host in ("0.0.0.0", "::") else bound_host
        self.url = f"{scheme}://{shown}:{bound_port}"
        self.port = bound_port
        log.info("listening", address=f"{bound_host}:{bound_port}", tls=bool(ssl_ctx),
                 basic_auth=bool(self.web and self.web.current().has_auth),
                 sources=[f"{s}/{t} {mask(a)}" for s, t, a in self._addresses])
        self.fleet.start()

    async def _reload_request(self) -> list[str]:
        return await self.reload("http")

    async def close(self) -> None:
        self.stop.set()
        await self.fleet.close()
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
