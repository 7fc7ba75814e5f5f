"""Resident memory of the whole exporter (exporter.app.running: sources, store, exposition, HTTP server).

The exporter runs in a fresh process against a simulator in another process; cycles run back to back
(interval ~0) with the client-side bucket opened wide, so that 1,000 cycles finish in minutes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from clients import scrape_once
from procs import memory_mb, next_message, run_child

WARM_UP_CYCLES = 3


@dataclass(frozen=True, slots=True)
class MemoryRun:
    webhook: str
    cycles: int  # total cycles, warm-up included
    samples: int = 10  # RSS readings spread over the cycles after warm-up
    timeout_s: float = 1500.0


def memory_main(conn: Connection, run: MemoryRun) -> None:
    run_child(conn, _memory(conn, run))


async def _memory(conn: Connection, run: MemoryRun) -> None:
    from exporter.app import running
    from exporter.config import Bitrix24Config, Config, RateLimit, Secret

    wide_open = RateLimit(requests_per_second=1e6, burst=1_000_000)  # the simulator does not limit either
    config = Config(bitrix24=(Bitrix24Config(name="bench", webhook_url=Secret(run.webhook), interval=1e-4,
                                             rate_limit=wide_open),))
    async with running(config) as exporter:
        conn.send({"ready": True})
        if await next_message(conn) != "go":
            return
        loop = exporter.loops[0]
        deadline = time.monotonic() + run.timeout_s
        host, port = exporter.url.removeprefix("http://").split(":")
        await _cycles(loop, WARM_UP_CYCLES, deadline)
        for encoding in ("gzip", "identity", "gzip"):
            await scrape_once(host, int(port), encoding)
        warm = memory_mb()
        samples: list[tuple[int, float]] = [(loop.cycles, warm)]
        started = time.perf_counter()
        step = max(1, (run.cycles - WARM_UP_CYCLES) // run.samples)
        targets = [*range(WARM_UP_CYCLES + step, run.cycles, step), run.cycles]
        for target in targets:
            await _cycles(loop, target, deadline)
            await scrape_once(host, int(port))
            samples.append((loop.cycles, memory_mb()))
        result: dict[str, Any] = {
            "warm_mb": warm, "samples": samples, "cycles": loop.cycles, "failures": loop.failures,
            "seconds": time.perf_counter() - started,
        }
        conn.send(result)
        await next_message(conn)


async def _cycles(loop: Any, target: int, deadline: float) -> None:
    while loop.cycles < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {loop.cycles} of {target} cycles before the deadline")
        await asyncio.sleep(0.005)

