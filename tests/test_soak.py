"""A bounded soak: many cycles with faults switching on and off; memory, sockets and tasks stay flat.

SOAK_SECONDS sets the length (CI runs the short form; run e.g. SOAK_SECONDS=300 for a long one).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import time
import tracemalloc

import httpx

from exporter.app import Exporter
from exporter.config import Config
from exporter.simulator.bitrix24 import FAULTS
from exporter.sources.bitrix24_client import RetryPolicy
from tests.conftest import eventually

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "8"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def run_for(seconds: float, server, exp, rng: random.Random, client: httpx.AsyncClient) -> int:
    deadline = time.monotonic() + seconds
    scrapes = 0
    while time.monotonic() < deadline:
        server.sim.fault = rng.choice([None, None, *[f for f in FAULTS if f != "timeout"]])
        for _ in range(5):
            response = await client.get(f"{exp.url}/metrics")
            assert response.status_code == 200
            scrapes += 1
            await asyncio.sleep(0.02)
    server.sim.fault = None
    return scrapes


async def test_soak_with_faults_keeps_memory_sockets_and_tasks_flat(portal_factory):
    server = await portal_factory(users=30, rate=10_000.0, burst=10_000)  # pacing is not under test
    server.sim.fault_retry_after = 0.01
    cfg = server.config(name="soak", interval=0.05, timeout=0.5)
    source = server.source(name="soak", interval=0.05, timeout=0.5)
    source._client._retry = RetryPolicy(attempts=2, rate_limit_attempts=2, base_delay=0.005, max_delay=0.01,
                                        default_operation_pause=0.01, min_operation_pause=0.005)
    rng = random.Random(1)
    loop = None
    async with Exporter(Config(bitrix24=(cfg,)), "127.0.0.1", 0, sources=[source], store=server.store,
                        max_backoff=0.1) as exp, httpx.AsyncClient() as client:
        loop = exp.loops[0]
        await eventually(lambda: exp.store.ready())
        await run_for(SOAK_SECONDS / 4, server, exp, rng, client)  # warm-up: caches, pools, imports
        await eventually(lambda: exp.store.states()[0].up, timeout=10)
        gc.collect()
        tracemalloc.start()
        fds, tasks, cycles = open_fds(), len(asyncio.all_tasks()), loop.cycles
        memory_before = tracemalloc.get_traced_memory()[0]
        scrapes = await run_for(SOAK_SECONDS, server, exp, rng, client)
        await eventually(lambda: exp.store.states()[0].up, timeout=10)
        gc.collect()
        memory_growth = tracemalloc.get_traced_memory()[0] - memory_before
        tracemalloc.stop()
        cycles_run = loop.cycles - cycles
        assert cycles_run >= 20 and scrapes >= 50
        assert open_fds() <= fds + 4, (fds, open_fds())
        assert len(asyncio.all_tasks()) <= tasks + 2
        assert memory_growth < 2_000_000, memory_growth
    assert sum(loop.store.states()[0].failures.values()) > 0  # faults really happened
