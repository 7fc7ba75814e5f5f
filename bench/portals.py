"""Many portals in one exporter process (issue 14): what one process can carry for an integrator.

Simulated portals (each its own aiohttp app on its own port, so its own webhook and its own leaky bucket)
run in simulator processes of their own; one exporter process (exporter.app.running, as deployed) watches
all of them. Measured: RSS, CPU seconds per minute of operation (a Prometheus-like scrape every 15 s
included; from the moment every portal has had its second cycle, so that each interval has one cycle of each
portal), /metrics latency under 10 concurrent keep-alive scrapers while cycles run, the series count, and each
portal's cycle against its own bound (the leaky-bucket bound plus one round trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from clients import scrape_once, until
from procs import memory_mb, next_message, run_child
from scrape import cpu_seconds

SCRAPE_EVERY_S = 15.0  # the exporter's own Prometheus, during the CPU window


@dataclass(frozen=True, slots=True)
class PortalsSpec:
    portals: int
    users: int
    latency: float = 0.05
    first: int = 0  # index of this process's first portal (seeds differ per portal)


@dataclass(frozen=True, slots=True)
class ManyRun:
    webhooks: tuple[str, ...]
    interval: float
    latency: float  # one round trip, added to each portal's bound


# --- the simulators -------------------------------------------------------------------------------


def portals_main(conn: Connection, spec: PortalsSpec) -> None:
    run_child(conn, _serve_portals(conn, spec))


async def _serve_portals(conn: Connection, spec: PortalsSpec) -> None:
    from exporter.simulator import bitrix24 as b24sim
    from exporter.simulator import serve

    sims = [b24sim.generate_portal(spec.users, seed=spec.first + i, hidden=0, groups=0, latency=spec.latency)
            for i in range(spec.portals)]
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve(b24sim.create_app(sim))) for sim in sims]
        conn.send({"webhooks": [f"{url}{sim.webhook_path}" for url, sim in zip(urls, sims, strict=True)]})
        while (message := await next_message(conn)) != "stop":
            if message == "stats":
                conn.send({"calls": [sum(s.calls.values()) for s in sims], "rejected": [s.rejected for s in sims]})


# --- the exporter ---------------------------------------------------------------------------------


def many_main(conn: Connection, run: ManyRun) -> None:
    run_child(conn, _many(conn, run))


class _Cycles:
    """Each portal's finished cycles (duration, bound), recorded from the store as they land."""

    def __init__(self, store: Any, latency: float) -> None:
        self.store = store
        self.latency = latency
        self.seen: dict[Any, float] = {}
        self.cycles: dict[str, list[tuple[float, float]]] = {}

    def __call__(self) -> None:
        for state in self.store.states():
            if state.last_success is not None and self.seen.get(state.key) != state.last_success:
                self.seen[state.key] = state.last_success
                self.cycles.setdefault(state.key.target, []).append(
                    (state.last_duration, state.cycle_bound + self.latency))

    def done(self, n: int) -> int:
        """Portals with at least `n` cycles."""
        return sum(1 for c in self.cycles.values() if len(c) >= n)


async def _many(conn: Connection, run: ManyRun) -> None:
    from exporter.app import running
    from exporter.config import Bitrix24Config, Config, Secret

    config = Config(bitrix24=tuple(Bitrix24Config(name=f"portal{i:03d}", webhook_url=Secret(url),
                                                  interval=run.interval) for i, url in enumerate(run.webhooks)))
    started = time.monotonic()
    async with running(config) as exporter:
        cycles = _Cycles(exporter.store, run.latency)
        exporter.store.on_change(cycles)
        host, port = exporter.url.removeprefix("http://").split(":")
        conn.send({"url": exporter.url})
        while (message := await next_message(conn)) != "stop":
            if message == "first":
                await until(lambda: cycles.done(1) == len(run.webhooks), step=0.05)
                conn.send({"seconds": time.monotonic() - started, "rss_mb": memory_mb(),
                           "renders": exporter.exposition.renders})
            elif message == "steady":
                # every portal's second cycle waits its slot in the interval once (exporter/scheduler.py): until
                # each has had it, fewer cycles run per interval than in steady operation
                await until(lambda: cycles.done(2) == len(run.webhooks), step=0.05)
                conn.send({"seconds": time.monotonic() - started})
            elif isinstance(message, tuple) and message[0] == "cpu":
                conn.send(await _cpu_window(exporter, host, int(port), message[1]))
            elif message == "mark":
                conn.send({"cpu_s": cpu_seconds(), "renders": exporter.exposition.renders,
                           "cycles": sum(len(c) for c in cycles.cycles.values())})
            elif message == "cycles":
                conn.send({"cycles": cycles.cycles, "rss_mb": memory_mb(), "peak_rss_mb": memory_mb("VmHWM")})


async def _cpu_window(exporter: Any, host: str, port: int, seconds: float) -> dict[str, Any]:
    """CPU and RSS over `seconds` of operation, with one gzip scrape every SCRAPE_EVERY_S."""
    cpu, renders = cpu_seconds(), exporter.exposition.renders
    rendering = getattr(exporter.exposition, "render_seconds_total", float("nan"))
    began = time.monotonic()
    rss: list[float] = []
    next_scrape = began
    while (now := time.monotonic()) < began + seconds:
        if now >= next_scrape:
            await scrape_once(host, port)
            next_scrape += SCRAPE_EVERY_S
        rss.append(memory_mb())
        await asyncio.sleep(1.0)
    elapsed = time.monotonic() - began
    return {"cpu_s": cpu_seconds() - cpu, "seconds": elapsed, "rss_max_mb": max(rss), "rss_end_mb": memory_mb(),
            "renders": exporter.exposition.renders - renders,
            "render_s": getattr(exporter.exposition, "render_seconds", float("nan")),
            "render_cpu_s": getattr(exporter.exposition, "render_seconds_total", float("nan")) - rendering}
