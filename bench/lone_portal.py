"""A lone 100-user portal (issue 14): the simulator's CPU per batch, and the steady-state cycle against one round trip.

    python bench/lone_portal.py            # CPU per batch, then 10 steady-state cycles at 50 ms latency (~70 s)
    python bench/lone_portal.py --cpu-only

Why: a real portal answers the 11 batches of a 100-user steady-state cycle on many servers at once; the
simulator answers them one after another in one process, so its own CPU time per batch is latency the
exporter did not cause. The first part replays the wave a real source sends (recorded from a
Bitrix24Source against an in-process simulator) straight into the simulator's app and reports CPU per
batch; the second runs the simulator and the source in processes of their own, cycles 6 s apart (the
bucket is never in the way), and reports the median cycle and the simulator process's CPU per cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from procs import PortalSpec, child, next_message, portal_main, run_child

USERS = 100
LATENCY = 0.05
CYCLES = 10
GAP_S = 6.0  # 11 calls a cycle drain from the exporter's bucket (2 req/s) in 5.5 s


# --- CPU per batch --------------------------------------------------------------------------------


async def record_wave(users: int) -> list[bytes]:
    """The batch bodies of a source's second (steady-state, pipelined) cycle."""
    from aiohttp import web

    from exporter.config import Bitrix24Config, Secret
    from exporter.simulator import bitrix24 as b24sim
    from exporter.simulator import serve
    from exporter.sources.bitrix24 import Bitrix24Source

    sim = b24sim.generate_portal(users, hidden=0, groups=0, rate_limited=False)
    app = b24sim.create_app(sim)
    bodies: list[bytes] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if request.match_info.get("method") == "batch":
            bodies.append(await request.read())  # read by the handler already: cached
        return response

    app.middlewares.append(record)
    async with serve(app) as url:
        source = Bitrix24Source(Bitrix24Config(name="lone", webhook_url=Secret(f"{url}{sim.webhook_path}")))
        try:
            await source.collect()
            bodies.clear()
            await source.collect()
        finally:
            await source.aclose()
    return bodies


async def cpu_per_batch(users: int, repeat: int = 200) -> dict[str, float]:
    """CPU (thread time) per batch in the simulator's handler, one request at a time; HTTP parsing excluded."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from exporter.simulator import bitrix24 as b24sim

    wave = await record_wave(users)
    counters = next(b for b in wave if len(json.loads(b)["cmd"]) == 50 and b'"p0"' not in b)
    mixed = next(b for b in wave if b'"p0"' in b)
    sim = b24sim.generate_portal(users, hidden=0, groups=0, rate_limited=False)
    app = b24sim.create_app(sim)
    spent: list[float] = []

    @web.middleware
    async def timed(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.thread_time()  # no latency and one request at a time: nothing else runs meanwhile
        response: web.StreamResponse = await handler(request)
        spent.append(time.thread_time() - started)
        return response

    app.middlewares.append(timed)
    out: dict[str, float] = {}
    async with TestClient(TestServer(app)) as client:
        path = f"{sim.webhook_path}batch"

        async def post(body: bytes) -> float:
            response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
            await response.read()
            return spent[-1]

        for name, body in (("counters_50", counters), ("mixed_user_get", mixed)):
            for _ in range(20):
                await post(body)
            out[name] = statistics.median([await post(body) for _ in range(repeat)])
        out["wave"] = statistics.median([sum([await post(b) for b in wave]) for _ in range(repeat // 10)])
    return out


# --- the steady-state cycle -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoneRun:
    webhook: str
    cycles: int
    gap: float


def cycles_main(conn: Connection, run: LoneRun) -> None:
    run_child(conn, _cycles(conn, run))


async def _cycles(conn: Connection, run: LoneRun) -> None:
    from exporter.config import Bitrix24Config, Secret
    from exporter.sources.bitrix24 import Bitrix24Source

    source = Bitrix24Source(Bitrix24Config(name="lone", webhook_url=Secret(run.webhook)))
    conn.send({"ready": True})
    if await next_message(conn) != "go":
        return
    walls: list[float] = []
    calls: list[int] = []
    try:
        started = time.perf_counter()
        await source.collect()  # the first cycle lists the users before their counters: not the steady state
        await asyncio.sleep(max(0.0, started + run.gap - time.perf_counter()))
        conn.send({"first": True})
        if await next_message(conn) != "go":
            return
        for _ in range(run.cycles):
            started = time.perf_counter()
            result = await source.collect()
            walls.append(time.perf_counter() - started)
            calls.append(result.calls)
            await asyncio.sleep(max(0.0, started + run.gap - time.perf_counter()))
    finally:
        await source.aclose()
    conn.send({"walls": walls, "calls": calls})
    await next_message(conn)


def process_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_cycles(users: int, latency: float, cycles: int, gap: float) -> dict[str, Any]:
    with child("portal", portal_main, PortalSpec(users, latency=latency)) as portal, \
            child("source", cycles_main, LoneRun(portal.ready["webhook"], cycles, gap)) as source:
        pid = portal.process.pid
        assert pid is not None
        source.ask("go", timeout=gap + 60)
        cpu = process_cpu(pid)  # the steady-state cycles only
        source.send("go")
        result: dict[str, Any] = source.receive(cycles * gap + 120)
        result["simulator_cpu_s"] = process_cpu(pid) - cpu
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--latency", type=float, default=LATENCY)
    parser.add_argument("--cycles", type=int, default=CYCLES)
    parser.add_argument("--gap", type=float, default=GAP_S, help="seconds from one cycle's start to the next")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f}", flush=True)
    from exporter import log

    log.configure("error")
    cpu = asyncio.run(cpu_per_batch(USERS))
    print(f"simulator CPU per batch (median, in its handler): 50 counters {cpu['counters_50'] * 1e3:.2f} ms, "
          f"user.get pages + 48 counters {cpu['mixed_user_get'] * 1e3:.2f} ms, "
          f"the whole wave {cpu['wave'] * 1e3:.1f} ms", flush=True)
    if args.cpu_only:
        return
    result = steady_cycles(USERS, args.latency, args.cycles, args.gap)
    walls = result["walls"]
    print(f"{USERS}-user portal, {args.latency * 1e3:.0f} ms latency, {len(walls)} steady-state cycles "
          f"({set(result['calls'])} calls each): median {statistics.median(walls) * 1e3:.1f} ms, "
          f"min {min(walls) * 1e3:.1f}, max {max(walls) * 1e3:.1f}; simulator process CPU "
          f"{result['simulator_cpu_s'] / len(walls) * 1e3:.0f} ms per cycle", flush=True)
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
