"""A bounded soak: many cycles of both sources with faults switching on and off; memory, sockets and
tasks stay flat. SOAK_SECONDS sets the length (CI runs the short form; e.g. SOAK_SECONDS=300 for a long one).
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
from exporter.config import Config, PachcaConfig, Secret
from exporter.simulator import bitrix24 as b24sim
from exporter.simulator import pachca as pachcasim
from exporter.simulator import serve
from exporter.sources.bitrix24_client import OperationPause
from exporter.sources.pachca import PachcaSource
from exporter.sources.retries import RetryPolicy
from tests.conftest import eventually

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "8"))
B24_FAULTS = [None, None, *[f for f in b24sim.FAULTS if f != "timeout"]]
PACHCA_FAULTS = [None, None, *sorted(f for f in pachcasim.FAULTS if f != "timeout")]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def our_tasks() -> int:
    """Tasks other than aiohttp's per-connection handlers (pooled keep-alive connections come and go)."""
    return sum(1 for t in asyncio.all_tasks() if "RequestHandler" not in t.get_coro().__qualname__)


def floor(values: list[int]) -> int:
    """What is always there, whatever is in flight at the moment of a sample."""
    return min(values)


async def run_for(seconds, portal, workspace, url, rng, client, samples=None) -> int:
    """Scrape while faults switch; `samples` collects (tasks, fds) after every scrape."""
    deadline = time.monotonic() + seconds
    scrapes = 0
    while time.monotonic() < deadline:
        portal.sim.fault = rng.choice(B24_FAULTS)
        workspace.fault = rng.choice(PACHCA_FAULTS)
        for _ in range(5):
            response = await client.get(f"{url}/metrics")
            assert response.status_code == 200
            scrapes += 1
            if samples is not None:
                samples.append((our_tasks(), open_fds()))
            await asyncio.sleep(0.02)
    portal.sim.fault = workspace.fault = None
    return scrapes


async def test_soak_with_faults_keeps_memory_sockets_and_tasks_flat(portal_factory):
    portal = await portal_factory(users=30, rate=10_000.0, burst=10_000)  # pacing is not under test here
    portal.sim.fault_retry_after = 0.01
    b24_cfg = portal.config(name="soak", interval=0.05, timeout=0.5)
    retry = RetryPolicy(attempts=2, rate_limit_attempts=2, base_delay=0.005, max_delay=0.01)
    b24 = portal.source(name="soak", interval=0.05, timeout=0.5, retry=retry,
                        pause=OperationPause(default=0.01, least=0.005))
    workspace = pachcasim.generate_workspace(200)
    workspace.retry_after = 0.01
    rng = random.Random(1)
    async with serve(pachcasim.create_app(workspace)) as p_url:
        p_cfg = PachcaConfig(name="soak", token=Secret(workspace.token), base_url=p_url + pachcasim.PREFIX,
                             interval=0.05, timeout=0.5)
        pachca = PachcaSource(p_cfg, retry=retry)
        config = Config(bitrix24=(b24_cfg,), pachca=(p_cfg,))
        async with Exporter(config, "127.0.0.1", 0, sources=[b24, pachca],
                            max_backoff=0.1) as exp, httpx.AsyncClient() as client:
            def all_up() -> bool:
                return all(s.up for s in exp.store.states())

            await eventually(all_up)
            await run_for(SOAK_SECONDS / 4, portal, workspace, exp.url, rng, client)  # warm-up
            await eventually(all_up, timeout=10)
            gc.collect()
            tracemalloc.start()
            samples: list[tuple[int, int]] = []
            cycles = [loop.cycles for loop in exp.loops]
            memory_before = tracemalloc.get_traced_memory()[0]
            scrapes = await run_for(SOAK_SECONDS, portal, workspace, exp.url, rng, client, samples)
            await eventually(all_up, timeout=10)
            gc.collect()
            memory_growth = tracemalloc.get_traced_memory()[0] - memory_before
            tracemalloc.stop()
            cycles_run = [loop.cycles - before for loop, before in zip(exp.loops, cycles, strict=True)]
            assert min(cycles_run) >= 20 and scrapes >= 50, (cycles_run, scrapes)
            # a leak raises the floor of what is always open; compare the first and the last fifth of the run
            fifth = len(samples) // 5
            first, last = samples[:fifth], samples[-fifth:]
            assert floor([t for t, _ in last]) <= floor([t for t, _ in first]) + 1, samples
            assert floor([f for _, f in last]) <= floor([f for _, f in first]) + 4, samples
            assert memory_growth < 2_000_000, memory_growth
            assert all(sum(s.failures.values()) > 0 for s in exp.store.states())  # faults really happened
