"""Live reconfiguration: SIGHUP and POST /-/reload read the config again and change only what changed.

A source whose settings are equal (frozen dataclasses; secrets compare by value, `*_file` ones re-read) keeps
running untouched: its loop, its schedule, its client and rate limiter, its last values. A changed one is
replaced: the old loop stops (even mid-cycle), its last good series stay in /metrics until the new one's first
cycle, the new one keeps the old schedule (its first cycle is due an interval after the old one's last began;
at once when that one was cut short), and on the same Bitrix24 portal it starts from the old client's bucket
level, so a reload never sends a burst the portal has already been sent. A removed source stops and its series
leave /metrics; an added one starts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog

from exporter.collector import ConfigReloads
from exporter.config import Bitrix24Config, Config, PachcaConfig
from exporter.errors import ConfigError
from exporter.scheduler import SourceLoop
from exporter.snapshot import SourceKey, Store
from exporter.sources import Source
from exporter.sources.bitrix24 import Bitrix24Source
from exporter.webconfig import WebConfig
from exporter.webwatch import LiveWebConfig

log = structlog.get_logger()
SourceSettings = Bitrix24Config | PachcaConfig


def settings_of(config: Config) -> dict[SourceKey, SourceSettings]:
    """Each source's settings by the key its series carry."""
    return {**{SourceKey("bitrix24", b.name): b for b in config.bitrix24},
            **{SourceKey("pachca", p.name): p for p in config.pachca}}


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a new config does to the running sources."""

    keep: tuple[SourceKey, ...] = ()
    replace: tuple[SourceKey, ...] = ()
    remove: tuple[SourceKey, ...] = ()
    add: tuple[SourceKey, ...] = ()

    @classmethod
    def between(cls, old: Mapping[SourceKey, SourceSettings | None],
                new: Mapping[SourceKey, SourceSettings]) -> ReloadPlan:
        return cls(keep=tuple(k for k in new if k in old and old[k] == new[k]),
                   replace=tuple(k for k in new if k in old and old[k] != new[k]),
                   remove=tuple(k for k in old if k not in new),
                   add=tuple(k for k in new if k not in old))

    def summary(self) -> dict[str, list[str]]:
        """For the log: {"kept": ["bitrix24/acme"], ...}."""
        return {name: [f"{k.source}/{k.target}" for k in keys] for name, keys in
                (("kept", self.keep), ("replaced", self.replace), ("removed", self.remove), ("added", self.add))}


@dataclass(slots=True)
class _Running:
    settings: SourceSettings | None  # None: a source handed in by a test, with no settings of its own
    source: Source
    loop: SourceLoop
    task: asyncio.Task[None] | None = None


class SourceFleet:
    """The running sources, one loop task each, changed source by source when the config changes."""

    def __init__(self, store: Store, build: Callable[[SourceSettings], Source], stop: asyncio.Event, *,
                 max_backoff: float = 300.0) -> None:
        self._store = store
        self._build = build
        self._stop = stop
        self._max_backoff = max_backoff
        self._running: dict[SourceKey, _Running] = {}
        self._lock = asyncio.Lock()  # an apply finishes before close() stops everything, and none runs after
        self._closed = False

    def adopt(self, config: Config, sources: Iterable[Source] | None = None) -> None:
        """The sources of `config`, or `sources` built elsewhere (tests) with the settings `config` has for them."""
        settings = settings_of(config)
        if sources is None:
            sources = [self._build(s) for s in settings.values()]
        for source in sources:
            key = self._store.register(source)
            self._running[key] = _Running(settings.get(key), source, self._loop(source))

    @property
    def sources(self) -> list[Source]:
        return [r.source for r in self._running.values()]

    @property
    def loops(self) -> list[SourceLoop]:
        return [r.loop for r in self._running.values()]

    def start(self) -> None:
        for running in self._running.values():
            self._start(running)

    async def apply(self, config: Config) -> ReloadPlan:
        """Change the running sources to those of `config`: keep, replace, remove and add by difference."""
        async with self._lock:
            if self._closed:
                return ReloadPlan()
            return await self._apply(settings_of(config))

    async def _apply(self, settings: dict[SourceKey, SourceSettings]) -> ReloadPlan:
        plan = ReloadPlan.between({k: r.settings for k, r in self._running.items()}, settings)
        built: dict[SourceKey, Source] = {}
        try:  # every new source exists before any old one stops
            for key in (*plan.replace, *plan.add):
                built[key] = self._build(settings[key])
        except BaseException:
            for source in built.values():
                await source.aclose()
            raise
        for key in plan.remove:
            await self._stop_one(self._running.pop(key))
            self._store.unregister(key)
        for key in plan.replace:
            old = self._running[key]
            delay = _first_delay(old.loop, built[key].interval)  # before stopping: is a cycle being cut short?
            await self._stop_one(old)
            _hand_over(old.source, built[key])
            self._store.register(built[key])  # keeps the old one's state until the successor's first cycle
            self._running[key] = _Running(settings[key], built[key], self._loop(built[key]))
            self._start(self._running[key], delay)
        for key in plan.add:
            self._store.register(built[key])
            self._running[key] = _Running(settings[key], built[key], self._loop(built[key]))
            self._start(self._running[key])
        return plan

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            for running in self._running.values():
                await self._stop_one(running)

    def _loop(self, source: Source) -> SourceLoop:
        return SourceLoop(source, self._store, max_backoff=self._max_backoff)

    def _start(self, running: _Running, first_delay: float = 0.0) -> None:
        key = running.loop.key
        running.task = asyncio.create_task(running.loop.run(self._stop, first_delay),
                                           name=f"{key.source}:{key.target}")

    @staticmethod
    async def _stop_one(running: _Running) -> None:
        if running.task is not None:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running.task
        await running.source.aclose()


def _hand_over(old: Source, new: Source) -> None:
    """On the same Bitrix24 portal, the new client starts from the old one's bucket level: the portal keeps one
    leaky bucket per portal (docs/api-notes.md#b24-leaky-bucket) and has counted what the old one sent."""
    if isinstance(old, Bitrix24Source) and isinstance(new, Bitrix24Source) and _portal(old) == _portal(new):
        new.bucket.take_over(old.bucket)


def _portal(source: Bitrix24Source) -> str:
    return urlsplit(source.config.webhook_url.reveal()).netloc.lower()


def _first_delay(old: SourceLoop, interval: float) -> float:
    """The successor keeps the schedule: due `interval` after the old loop's last cycle began; at once when
    that cycle was cut short by the reload, or none ever ran."""
    if old.in_cycle or old.cycle_started is None:
        return 0.0
    return max(0.0, old.cycle_started + interval - time.monotonic())


class Reloader:
    """Reads the config (and the web config) again, all or nothing; one reload at a time.

    `load` reads and validates the config file as at start-up. Nothing changes unless both files are valid;
    the outcome is published through `status` (the two tasks_exporter_config_last_reload_* metrics).
    """

    def __init__(self, load: Callable[[], Config], fleet: SourceFleet, status: ConfigReloads, *,
                 web: LiveWebConfig | None = None, applied: Callable[[Config], None] = lambda _: None) -> None:
        self._load = load
        self._fleet = fleet
        self._status = status
        self._web = web
        self._applied = applied
        self._lock = asyncio.Lock()

    async def reload(self, trigger: str) -> list[str]:
        """One line per problem when the new config is refused (and the old one keeps running); [] when applied."""
        async with self._lock:
            problems: list[str] = []
            config: Config | None = None
            web: WebConfig | None = None
            try:
                config = self._load()
            except ConfigError as exc:
                problems += exc.problems
            if self._web is not None:
                try:
                    web = self._web.load()
                except ConfigError as exc:
                    problems += exc.problems
            if config is None or problems:
                return self._failed(trigger, problems)
            try:
                plan = await self._fleet.apply(config)
                if self._web is not None and web is not None:
                    self._web.install(web)
            except ConfigError as exc:  # a TLS file changed again between reading and installing it
                return self._failed(trigger, exc.problems)
            except Exception as exc:  # a bug: say so, loudly, and keep serving
                log.exception("config_reload_crashed", trigger=trigger, error=repr(exc))
                return self._failed(trigger, [f"internal error ({type(exc).__name__}): see config_reload_crashed"])
            self._applied(config)
            self._status.successful = True
            self._status.success_timestamp = time.time()
            for warning in config.warnings:
                log.warning("config_warning", detail=warning)
            log.info("config_reloaded", trigger=trigger, **plan.summary())
            return []

    def _failed(self, trigger: str, problems: list[str]) -> list[str]:
        self._status.successful = False
        log.error("config_reload_failed", trigger=trigger, problems=problems,
                  hint="the running config stays in force")
        return problems
