"""A bounded soak: both sources cycle while faults switch on and off, in an exporter process of its own.
Its sockets and tasks stay within what its limits allow at every sample, and its memory stays flat.
SOAK_SECONDS sets the length (CI runs the short form; e.g. SOAK_SECONDS=300 for a long one).

Why a process of its own: counted in the test process, every loopback connection shows up twice (the
client's end and the simulator's) and the test's own sockets come and go, so the only criterion left was a
guess ("the floor may rise by 4"), which flaked. Counted in the exporter's process and sorted by where each
socket leads, every class of file descriptor has a bound that follows from a configured limit (see
`Limits`). The exporter there is built with `Exporter(config, sources=...)` rather than started
with `python -m exporter --config`: retry policies and the scheduler's backoff cap are constructor
arguments, not config keys, and the soak needs fast ones to run a hundred cycles in seconds.

`test_soak_catches_a_leak` runs the same soak with a source that leaves one portal connection and one task
behind per cycle, and checks that the criterion reports both (one run: "tasks: 33 > 22", "outbound: 26 > 10";
the healthy soak beside it peaked at 15 tasks and 5 outbound connections).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import math
import multiprocessing
import os
import socket
import stat
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from multiprocessing.connection import Connection
from typing import Any

import httpx

from exporter import log
from exporter.app import Exporter
from exporter.config import ROLE_NAMES, Bitrix24Config, Config, PachcaConfig, RateLimit, Secret
from exporter.simulator import bitrix24 as b24sim
from exporter.simulator import pachca as pachcasim
from exporter.simulator import serve
from exporter.sources import CycleResult, Source
from exporter.sources.bitrix24 import Bitrix24Source
from exporter.sources.bitrix24_client import BATCH_LIMIT
from exporter.sources.pachca import PachcaSource
from tests.conftest import B24_FAULT_REASONS, FAIL_FAST, FAST_PAUSE, PACHCA_FAULT_REASONS, eventually, samples

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "8"))
# every fault but "timeout" (a cycle would wait for its deadline), and healthy periods in between
B24_FAULTS = [None, *[f for f in b24sim.FAULTS if f != "timeout"], None]
PACHCA_FAULTS = [None, *sorted(f for f in pachcasim.FAULTS if f != "timeout"), None]
USERS = 60
INTERVAL = 0.05
SAMPLE_EVERY = 0.01  # seconds between the exporter process's looks at itself


@dataclass(frozen=True, slots=True)
class Limits:
    """What the exporter process may hold at any instant, each bound derived from a configured limit.

    - outbound: connections to the APIs. The Bitrix24 client's pool holds at most `max_concurrency`
      (aiohttp's TCPConnector(limit=...)). The Pachca client walks pages one request at a time, so its pool
      never needs a second connection. A connection the peer has reset counts until the pool drops it, and
      a connection a pool gives up (a timeout or a reset) keeps its socket until asyncio's transport closes it
      on a later loop iteration, while its replacement may already be open: so each pool holds at most its
      size in open sockets plus as many being closed (`outbound_sockets`, twice the pools' sizes). A leak
      grows past that without bound (the leak test reaches 26 against 10).
    - inbound: /metrics connections, at most the scraper's pool (this test's client: one connection).
    - listening: the one socket the exporter serves on.
    - own: descriptors that are neither TCP connections nor the listener: stdin/stdout/stderr, the event
      loop's epoll and self-pipe, the pipes multiprocessing keeps to the test process. All
      are opened before the first sample and nothing opens more per cycle, so the bound is the count at the
      first sample (eleven with Python 3.11 and the spawn start method: measured rather than written
      down, as it varies with both).
    - tasks: the process's main task; per source loop at most two (the loop, plus the task `wait_for`
      wraps around the cycle or the wait on Python < 3.12); one per batch in flight (`as_they_finish` runs at
      most `max_concurrency` at once; the bound counts every batch of the wave, which holds): the counter
      batches and, from the second cycle, the user listing that travels with them (`listing_batches`); the
      two tasks of `both`, which runs that wave beside the structure refresh or a direct listing; the render
      task; aiohttp's two per /metrics connection (the connection's handler and the request's); and one per
      outbound connection being opened (anyio's connect_tcp races its addresses in a task group, one task per
      address, and the simulators have one address each).
    """

    max_concurrency: int
    counter_batches: int
    scraper_connections: int = 1
    pachca_connections: int = 1
    source_loops: int = 2
    listing_batches: int = 1  # the user.get pages of a portal this size fit in one batch
    beside_the_wave: int = 2  # sources.bitrix24.both

    @property
    def outbound(self) -> int:
        return self.max_concurrency + self.pachca_connections

    @property
    def outbound_sockets(self) -> int:
        return 2 * self.outbound

    @property
    def tasks(self) -> int:
        batches = self.counter_batches + self.listing_batches + self.beside_the_wave
        return 1 + 2 * self.source_loops + batches + 1 + 2 * self.scraper_connections + self.outbound


LIMITS = Limits(max_concurrency=4,  # below the cycle's counter batches, so the pool really fills up
                counter_batches=math.ceil(USERS * len(ROLE_NAMES) / BATCH_LIMIT))  # config default: groups (0,)


@dataclass(frozen=True, slots=True)
class Sample:
    """What the exporter process held at one instant."""

    tasks: int
    outbound: int
    inbound: int
    listening: int
    own: int


@dataclass(frozen=True, slots=True)
class Report:
    """What the exporter process saw of itself while measured: the first sample, the most of each kind
    (kept as running maxima, so a long soak does not grow a list), cycles per source, memory growth."""

    first: Sample
    most: Sample
    samples: int
    cycles: list[int]
    memory_growth: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What the exporter process needs to know (it is pickled to a freshly spawned interpreter)."""

    webhook: str
    pachca_url: str
    token: str
    leak: bool = False


# --- in the exporter process ------------------------------------------------------------------------


def census(own_port: int) -> Sample:
    """Sort this process's file descriptors by what they are and where they lead."""
    outbound = inbound = listening = own = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            is_socket = stat.S_ISSOCK(os.fstat(int(name)).st_mode)
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if not is_socket:
            own += 1
            continue
        with socket.socket(fileno=os.dup(int(name))) as sock:  # a duplicate: closing it leaves the original
            if sock.family == socket.AF_UNIX:
                own += 1
            elif sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                listening += 1
            elif sock.getsockname()[1] == own_port:
                inbound += 1
            else:
                outbound += 1
    return Sample(len(asyncio.all_tasks()), outbound, inbound, listening, own)


class LeakingSource:
    """A Bitrix24 source with a deliberate leak: one connection to the portal and one task per cycle."""

    def __init__(self, inner: Bitrix24Source, portal: tuple[str, int]) -> None:
        self.inner = inner
        self.source, self.target = inner.source, inner.target
        self.interval, self.cycle_timeout = inner.interval, inner.cycle_timeout
        self.telemetry = inner.telemetry
        self.portal = portal
        self.kept: list[Any] = []

    async def collect(self) -> CycleResult:
        _, writer = await asyncio.open_connection(*self.portal)
        self.kept += [writer, asyncio.create_task(asyncio.Event().wait())]
        return await self.inner.collect()

    def cycle_bound(self, calls: int) -> float:
        return self.inner.cycle_bound(calls)

    async def aclose(self) -> None:
        await self.inner.aclose()


def run_exporter(conn: Connection, plan: Plan) -> None:
    """The exporter process: serves, answers the test's requests over `conn`, samples itself when asked."""
    log.configure("error")  # the faults' warnings are expected; the test reads the failures off /metrics
    asyncio.run(_serve(conn, plan))


async def _serve(conn: Connection, plan: Plan) -> None:
    # The default request timeout (10 s): no soak fault is a hang (the simulators' "timeout" fault is left out),
    # so a short one would only turn a starved process's late answers (a reset, a 500) into timeouts.
    b24_cfg = Bitrix24Config(name="soak", webhook_url=Secret(plan.webhook), interval=INTERVAL,
                             max_concurrency=LIMITS.max_concurrency, rate_limit=RateLimit(10_000.0, 10_000))
    p_cfg = PachcaConfig(name="soak", token=Secret(plan.token), base_url=plan.pachca_url, interval=INTERVAL)
    b24: Source = Bitrix24Source(b24_cfg, retry=FAIL_FAST, pause=FAST_PAUSE)
    if plan.leak:
        url = httpx.URL(plan.webhook)
        b24 = LeakingSource(b24, (url.host, url.port or 80))
    pachca = PachcaSource(p_cfg, retry=FAIL_FAST)
    async with Exporter(Config(bitrix24=(b24_cfg,), pachca=(p_cfg,)), "127.0.0.1", 0, sources=[b24, pachca],
                        max_backoff=0.1) as exp:
        conn.send(exp.url)
        first = most = None
        samples = memory_before = 0
        while True:
            if tracemalloc.is_tracing():
                now = census(exp.port)
                first = first or now
                most = Sample(*(max(a, b) for a, b in zip(astuple(now), astuple(most or now), strict=True)))
                samples += 1
            if conn.poll():
                request = conn.recv()
                if request == "cycles":
                    conn.send([loop.cycles for loop in exp.loops])
                elif request == "measure":
                    gc.collect()
                    tracemalloc.start()
                    memory_before = tracemalloc.get_traced_memory()[0]
                    conn.send([loop.cycles for loop in exp.loops])
                elif request == "stop":
                    gc.collect()
                    growth = tracemalloc.get_traced_memory()[0] - memory_before
                    tracemalloc.stop()
                    conn.send(Report(first, most, samples, [loop.cycles for loop in exp.loops], growth))
                    return
            await asyncio.sleep(SAMPLE_EVERY)


# --- in the test process --------------------------------------------------------------------------


class ExporterProcess:
    """The exporter in a spawned interpreter (nothing inherited from pytest's), and the way to talk to it."""

    def __init__(self, plan: Plan) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=run_exporter, args=(child_end, plan), daemon=True)
        self.url = ""

    async def __aenter__(self) -> ExporterProcess:
        self.process.start()
        self.url = await self.answer(timeout=30)
        return self

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:  # the test failed before asking the process to stop
            self.process.terminate()
        await eventually(lambda: not self.process.is_alive(), timeout=10)
        self.process.join()

    async def ask(self, request: str) -> Any:
        self.conn.send(request)
        return await self.answer()

    async def answer(self, timeout: float = 10.0) -> Any:  # noqa: ASYNC109 (a polling deadline, as in eventually)
        def ready() -> bool:
            if not self.conn.poll() and not self.process.is_alive():
                raise RuntimeError(f"the exporter process exited with {self.process.exitcode}")
            return self.conn.poll()

        await eventually(ready, timeout=timeout, interval=0.005)
        return self.conn.recv()


async def run_periods(exp: ExporterProcess, client: httpx.AsyncClient, portal: b24sim.PortalSimulator,
                      workspace: pachcasim.PachcaSimulator, faults: Iterator[tuple[str | None, str | None]],
                      seconds: float, min_periods: int) -> None:
    """Switch faults period by period; each period lasts until both sources have finished two cycles, so at
    least one whole cycle of each ran under that period's faults. Scrapes /metrics while it waits. Runs for
    `seconds`, and on a slow machine longer, until `min_periods` have passed."""
    deadline = time.monotonic() + seconds
    periods = 0
    while time.monotonic() < deadline or periods < min_periods:
        portal.fault, workspace.fault = next(faults)
        await eventually(functools.partial(scraped_until, exp, client, await exp.ask("cycles"), 2), timeout=30)
        periods += 1
    portal.fault = workspace.fault = None


async def scraped_until(exp: ExporterProcess, client: httpx.AsyncClient, started: list[int], more: int) -> bool:
    """Scrape once; True when every source has finished `more` cycles since `started`."""
    (await client.get(f"{exp.url}/metrics")).raise_for_status()
    return all(now >= then + more for now, then in zip(await exp.ask("cycles"), started, strict=True))


def fault_schedule() -> Iterator[tuple[str | None, str | None]]:
    """Every Bitrix24 fault and every Pachca fault in turn, in pairs that shift from round to round."""
    return zip(itertools.cycle(B24_FAULTS), itertools.cycle(PACHCA_FAULTS))


def leak_findings(report: Report, limits: Limits) -> list[str]:
    """Every bound the exporter process went past, with the most it held."""
    bounds = Sample(tasks=limits.tasks, outbound=limits.outbound_sockets, inbound=limits.scraper_connections,
                    listening=1, own=report.first.own)
    return [f"{name}: {most} > {bound}" for name, most, bound in zip(
        Sample.__slots__, astuple(report.most), astuple(bounds), strict=True) if most > bound]


def failure_reasons(text: str, source: str) -> set[str]:
    failures = samples(text, "tasks_exporter_source_failures_total", source=source)
    return {dict(key)["reason"] for key, n in failures.items() if n > 0}


async def soak(portal_factory: Any, seconds: float, min_periods: int, faults: Iterator[tuple[str | None, str | None]],
               leak: bool = False, settled: Callable[[str], bool] = lambda _: True) -> tuple[Report, str, list[int]]:
    """Run the exporter process through a warm-up, then measure it through `seconds` of switching faults
    (at least `min_periods`); its report, the last /metrics page and the cycles each source ran.

    Renders are paced (exporter/exposition.py: at most a share of the time), so the last periods' cycles reach
    /metrics a moment after they end: the last page is the first one `settled` accepts (polled, 30 s)."""
    server = await portal_factory(users=USERS, rate=10_000.0, burst=10_000)  # pacing is not under test here
    server.sim.fault_retry_after = 0.01
    workspace = pachcasim.generate_workspace(200)
    workspace.retry_after = 0.01
    async with serve(pachcasim.create_app(workspace)) as p_url:
        plan = Plan(webhook=server.webhook, pachca_url=p_url + pachcasim.PREFIX, token=workspace.token,
                    leak=leak)
        async with ExporterProcess(plan) as exp, httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as client:
            await run_periods(exp, client, server.sim, workspace, faults, seconds / 4, 0)  # warm-up
            started = await exp.ask("measure")
            await run_periods(exp, client, server.sim, workspace, faults, seconds, min_periods)
            async def last_page() -> str | None:
                page = (await client.get(f"{exp.url}/metrics")).text
                return page if settled(page) else None

            text = await eventually(last_page, timeout=30)
            report: Report = await exp.ask("stop")
    return report, text, [now - then for now, then in zip(report.cycles, started, strict=True)]


async def test_soak_with_faults_keeps_sockets_tasks_and_memory_within_limits(portal_factory):
    # every fault at least once: the two schedules are as long as their fault lists
    expected = {"bitrix24": {B24_FAULT_REASONS[f] for f in B24_FAULTS if f},
                "pachca": {PACHCA_FAULT_REASONS[f] for f in PACHCA_FAULTS if f in PACHCA_FAULT_REASONS}}

    def every_fault_counted(page: str) -> bool:
        return all(failure_reasons(page, source) >= reasons for source, reasons in expected.items())

    report, text, cycles = await soak(portal_factory, SOAK_SECONDS, max(len(B24_FAULTS), len(PACHCA_FAULTS)),
                                      fault_schedule(), settled=every_fault_counted)
    assert leak_findings(report, LIMITS) == [], (LIMITS, report, cycles)
    assert report.memory_growth < 2_000_000, report.memory_growth
    # every fault was switched on for at least one whole cycle and failed it for its own reason, and nothing else
    assert failure_reasons(text, "bitrix24") == expected["bitrix24"]
    assert failure_reasons(text, "pachca") == expected["pachca"]


async def test_soak_catches_a_leak(portal_factory):
    """One connection and one task left behind per Bitrix24 cycle go past their bounds: each period runs
    two cycles or more, so this many periods leave more tasks behind than the bound allows in all (no
    faults this time: healthy cycles are the quickest)."""
    report, _, _ = await soak(portal_factory, 0.0, LIMITS.tasks // 2 + 1, itertools.repeat((None, None)), leak=True)
    found = leak_findings(report, LIMITS)
    assert [f.split(":")[0] for f in found] == ["tasks", "outbound"], found
