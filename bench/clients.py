"""Clients under test, each run in its own process: ours, the naive baseline, fast-bitrix24, our Pachca source.

A client process builds its client, answers 'ready', waits for 'go' (so several can start together),
runs its cycles and sends back what it measured about itself: wall time, CPU time, RSS.
"Ours" is the whole exporter (exporter.app.Exporter: scheduler, source, store, render, HTTP server), and
its cycle time is the scheduler's own measurement, the one /metrics publishes.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from procs import memory_mb, next_message, run_child

from exporter.snapshot import PortalSnapshot

Cycle = Callable[[], Awaitable[tuple[int, int]]]  # one cycle -> (users seen, user x role answers)


@dataclass(frozen=True, slots=True)
class ClientRun:
    client: str  # "ours" | "naive" | "fast-bitrix24" | "fast-bitrix24 slow()"
    webhook: str
    cycles: int = 1


def fast_bitrix24_installed() -> bool:
    """fast-bitrix24 is a benchmark-only extra (`pip install -e '.[bench]'`); without it its rows say so."""
    try:
        import fast_bitrix24  # noqa: F401
    except ImportError:
        return False
    return True


def bitrix24_main(conn: Connection, run: ClientRun) -> None:
    run_child(conn, _bitrix24(conn, run))


async def _bitrix24(conn: Connection, run: ClientRun) -> None:
    if run.client == "ours":
        await _ours(conn, run)
        return
    build = {"naive": _naive, "fast-bitrix24": _fast, "fast-bitrix24 slow()": _fast_slow}[run.client]
    cycle, close = build(run.webhook)
    conn.send({"ready": True})
    if await next_message(conn) != "go":
        return
    walls: list[float] = []
    cpu = time.process_time()
    users = answers = 0
    for _ in range(run.cycles):
        started = time.perf_counter()
        users, answers = await cycle()
        walls.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu
    await close()
    conn.send({"walls": walls, "cpu_s": cpu, "rss_mb": memory_mb(), "peak_rss_mb": memory_mb("VmHWM"),
               "users": users, "answers": answers})
    await next_message(conn)


async def _ours(conn: Connection, run: ClientRun) -> None:
    """The exporter as deployed: cycles on its scheduler, then the snapshot rendered and scraped once."""
    from exporter.app import Exporter
    from exporter.config import Bitrix24Config, Config, Secret

    # defaults: 2 req/s, burst 50, 8 requests at a time; one cycle, or `cycles` back to back
    config = Bitrix24Config(name="bench", webhook_url=Secret(run.webhook),
                            interval=3600.0 if run.cycles == 1 else 1e-3)
    exporter = Exporter(Config(bitrix24=(config,)), host="127.0.0.1", port=0)
    conn.send({"ready": True})
    if await next_message(conn) != "go":
        return
    cpu = time.process_time()
    await exporter.start()
    loop, walls = exporter.loops[0], []
    while len(walls) < run.cycles:
        await asyncio.sleep(0.01)
        if loop.cycles > len(walls):
            walls.append(exporter.store.states()[0].last_duration)
    state = exporter.store.states()[0]
    if not state.up or not isinstance(state.data, PortalSnapshot):
        raise RuntimeError(f"cycle failed: {state.last_error}")
    await until(lambda: exporter.exposition.renders >= 2)  # the first render is of the empty store, at start
    host, port = exporter.url.removeprefix("http://").split(":")
    await scrape_once(host, int(port))
    cpu = time.process_time() - cpu
    rss, peak = memory_mb(), memory_mb("VmHWM")
    await exporter.close()
    conn.send({"walls": walls, "cpu_s": cpu, "rss_mb": rss, "peak_rss_mb": peak, "users": len(state.data.users),
               "answers": len({(r.user_id, r.role) for r in state.data.readings})})
    await next_message(conn)


async def until(check: Callable[[], bool], step: float = 0.01) -> None:
    """Poll `check` (state of a component that offers no event to wait on) until it holds."""
    while not check():  # noqa: ASYNC110 -- the exporter exposes a counter, not an event
        await asyncio.sleep(step)


async def scrape_once(host: str, port: int, encoding: str = "gzip") -> int:
    """GET /metrics on a fresh connection; returns the body size."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: {encoding}\r\n"
                 "Connection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    return len(answer)


def _naive(webhook: str) -> tuple[Cycle, Callable[[], Awaitable[None]]]:
    from naive import NaiveClient

    client = NaiveClient(webhook)

    async def cycle() -> tuple[int, int]:
        answers = await client.cycle()
        return len({uid for uid, _ in answers}), sum(1 for a in answers.values() if a)

    return cycle, client.aclose


def _fast(webhook: str, slow: bool = False) -> tuple[Cycle, Callable[[], Awaitable[None]]]:
    import logging

    from fast_bitrix24 import BitrixAsync

    from exporter.sources.bitrix24 import ROLES

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # its failed retries end as unretrieved tasks
    # it sets its own logger to DEBUG and logs every request and answer in full: formatting those records
    # cost it CPU time in runs before 2026-11-25 22:10 UTC (issue 14), which no user of it would pay
    logging.getLogger("fast_bitrix24").setLevel(logging.WARNING)
    # its defaults are the plain-plan limits: request_pool_size=50, requests_per_second=2.0
    bitrix = BitrixAsync(webhook, verbose=False)

    async def run() -> tuple[int, int]:
        people = await bitrix.get_all("user.get", {"FILTER": {"ACTIVE": True}})
        ids = sorted({int(p["ID"]) for p in people})
        items = [{"userId": uid, "groupId": 0, "type": kind} for uid in ids for kind in ROLES.values()]
        results = await bitrix.call("tasks.task.counters.get", items)
        return len(ids), sum(1 for r in results if isinstance(r, dict) and r)

    async def cycle() -> tuple[int, int]:
        if not slow:
            return await run()
        with bitrix.slow():  # its documented remedy for rate-limit errors: one request at a time
            return await run()

    async def close() -> None:
        return None

    return cycle, close


def _fast_slow(webhook: str) -> tuple[Cycle, Callable[[], Awaitable[None]]]:
    return _fast(webhook, slow=True)


# --- Pachca ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkspaceRun:
    base_url: str
    token: str
    trace: bool  # tracemalloc during the cycle (slows Python down: a separate run from the timed one)


def pachca_main(conn: Connection, run: WorkspaceRun) -> None:
    run_child(conn, _pachca(conn, run))


async def _pachca(conn: Connection, run: WorkspaceRun) -> None:
    from exporter.config import PachcaConfig, Secret
    from exporter.sources.pachca import PachcaSource

    config = PachcaConfig(name="bench", token=Secret(run.token), base_url=run.base_url)
    source = PachcaSource(config)
    conn.send({"ready": True})
    if await next_message(conn) != "go":
        return
    if run.trace:
        tracemalloc.start()
    started = time.perf_counter()
    cycle = await source.collect()
    tally = cycle.data
    wall = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] if run.trace else 0
    tracemalloc.stop()
    await source.aclose()
    result: dict[str, Any] = {"wall": wall, "calls": cycle.calls, "pages": tally.pages,
                              "total": tally.total, "peak_mb": peak / 2**20}
    conn.send(result)
    await next_message(conn)
