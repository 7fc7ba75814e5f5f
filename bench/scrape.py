"""/metrics under load: an exporter process serving a big snapshot, and a scraper process hammering it.

The exporter side is composed like exporter.app.Exporter.start (Store -> SnapshotCollector -> Exposition
-> build_app), with the big snapshot put straight into the store; on request it also runs a real
Bitrix24 cycle against a slow simulator, so scrapes are measured while API calls are in flight.
The scraper speaks minimal HTTP/1.1 over raw sockets so that its own overhead stays out of the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import statistics
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import SimpleNamespace
from typing import Any

from procs import next_message, run_child

COUNTERS_PER_ROLE = ("expired", "new_comments")
ROLE_NAMES = ("all", "responsible", "accomplice", "auditor", "originator")
SERIES_PER_USER = len(ROLE_NAMES) * len(COUNTERS_PER_ROLE) + 1  # bitrix24_tasks x 10 + bitrix24_user_info


def big_snapshot(series: int) -> Any:
    """A PortalSnapshot with about `series` series: 10 counters and one info series per user."""
    from exporter.snapshot import CounterQuery, PortalSnapshot, PortalUser

    users = tuple(PortalUser(uid, f"User {uid} Benchmark") for uid in range(1, series // SERIES_PER_USER + 1))
    counters = {CounterQuery(u.user_id, 0, role): tuple((counter, float((u.user_id * 7 + i) % 23))
                                                        for i, counter in enumerate(COUNTERS_PER_ROLE))
                for u in users for role in ROLE_NAMES}
    return PortalSnapshot(users=users, counters=counters, hidden_users=0, failed_commands=0)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the exporter process -------------------------------------------------------------------------


def exporter_main(conn: Connection, series: int) -> None:
    run_child(conn, _exporter(conn, series))


async def _exporter(conn: Connection, series: int) -> None:
    from aiohttp import web

    from exporter.collector import SnapshotCollector
    from exporter.exposition import Exposition
    from exporter.server import build_app
    from exporter.simulator import serve
    from exporter.snapshot import ApiTelemetry, Store

    store = Store()
    exposition = Exposition(SnapshotCollector(store).snapshot_sections)
    key = store.register(SimpleNamespace(source="bitrix24", target="big", interval=60.0, telemetry=ApiTelemetry()))
    store.succeeded(key, big_snapshot(series), 1.0)
    started = time.perf_counter()
    exposition.render_now()
    render_s = time.perf_counter() - started
    store.on_change(exposition.invalidate)
    app = build_app(store, exposition, None, [("bitrix24", "big", "-")])
    scrapes = 0

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal scrapes
        scrapes += request.path == "/metrics"
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(count)
    live = _LiveCycle(store)
    async with serve(app) as url:
        conn.send({"url": url, "render_s": render_s})
        cpu = 0.0
        while (message := await next_message(conn)) != "stop":
            if isinstance(message, tuple) and message[0] == "cycle":
                live.start(message[1])
                conn.send({"ok": True})
            elif message == "measure":
                cpu, scrapes = cpu_seconds(), 0
                conn.send({"ok": True})
            elif message == "measured":
                conn.send({"cpu_s": cpu_seconds() - cpu, "scrapes": scrapes, **await live.stop()})


class _LiveCycle:
    """A real Bitrix24 source loop in the exporter process, talking to a (slow) simulator."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.loop: Any = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()

    def start(self, webhook: str) -> None:
        from exporter.config import Bitrix24Config, Secret
        from exporter.scheduler import SourceLoop
        from exporter.sources.bitrix24 import Bitrix24Source

        config = Bitrix24Config(name="live", webhook_url=Secret(webhook), interval=3600.0)
        source = Bitrix24Source(config)
        self.store.register(source)
        self.loop = SourceLoop(source, self.store)
        self.task = asyncio.get_running_loop().create_task(self.loop.run(self.stopping))

    async def stop(self) -> dict[str, Any]:
        if self.task is None:
            return {"cycles_done": None}
        self.stopping.set()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.loop.source.aclose()
        return {"cycles_done": self.loop.cycles}


# --- the scraper process --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScrapeLoad:
    url: str
    connections: int  # keep-alive connections opened up front (the most concurrent scrapers asked for)
    budget_s: float  # a window stops after this many seconds even if not all scrapes are done


def scraper_main(conn: Connection, load: ScrapeLoad) -> None:
    run_child(conn, _scraper(conn, load))


async def _scraper(conn: Connection, load: ScrapeLoad) -> None:
    """Answers ("go", scrapers, scrapes) with the latency of every scrape of that window."""
    host, port = load.url.removeprefix("http://").split(":")
    streams = [await asyncio.open_connection(host, int(port)) for _ in range(load.connections)]
    request = (f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\nAccept-Encoding: gzip\r\n"
               "User-Agent: bench\r\n\r\n").encode()
    for _ in range(WARM_UP_SCRAPES):  # lets loopback TCP buffers grow to their working size
        await asyncio.gather(*(_get(reader, writer, request) for reader, writer in streams))
    conn.send({"ready": True})
    while (message := await next_message(conn)) != "stop":
        _, scrapers, total = message
        window = _Window(total, time.monotonic() + load.budget_s)
        await asyncio.gather(*(window.run(reader, writer, request) for reader, writer in streams[:scrapers]))
        conn.send({"latencies": window.latencies, "body_bytes": statistics.fmean(window.sizes)})
    for _, writer in streams:
        writer.close()


WARM_UP_SCRAPES = 20


class _Window:
    """`total` scrapes shared by every scraper of a window (closed loop: next request after each answer)."""

    def __init__(self, total: int, deadline: float) -> None:
        self.left = total
        self.deadline = deadline
        self.latencies: list[float] = []
        self.sizes: list[int] = []

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        while self.left > 0 and time.monotonic() < self.deadline:
            self.left -= 1
            started = time.perf_counter()
            self.sizes.append(await _get(reader, writer, request))
            self.latencies.append(time.perf_counter() - started)


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One keep-alive GET; returns the body size. Minimal parsing: status line and Content-Length."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"/metrics answered {status.decode()}")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return length


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
