"""Bitrix24 cycle: ours vs the naive client vs fast-bitrix24, each on a fresh simulator with the same settings.

Every run gets its own simulator process (so its own, empty, leaky bucket: 2 req/s, burst 50; 50 ms per
call) and its own client process. Runs that take minutes (their bound is over a minute) wait for the
bucket almost all the time, so they run side by side to keep the benchmark short; the rest run alone.
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from clients import ClientRun, bitrix24_main, fast_bitrix24_installed
from naive import naive_calls
from procs import BenchError, PortalSpec, child, portal_main
from report import number, seconds, table

LATENCY = 0.05
RATE = 2.0
BURST = 50
ROLES = 5
PAGE = BATCH = 50
PARALLEL_ABOVE_S = 60.0
FAST = ("fast-bitrix24", "fast-bitrix24 slow()")  # its defaults, and its slow mode (one request at a time)
CLIENTS = ("ours", "naive", *FAST)


def batched_calls(users: int) -> int:
    """Calls of a batching client: user.get page 1, the other pages 50 to a batch, counters 50 to a batch."""
    pages = -(-users // PAGE)
    return 1 + -(-max(0, pages - 1) // BATCH) + -(-users * ROLES // BATCH)


def bound(calls: int) -> float:
    """The least time the portal's leaky bucket allows for `calls` requests from empty, plus one round trip."""
    return max(0, calls - BURST) / RATE + LATENCY


@dataclass(frozen=True, slots=True)
class Job:
    client: str
    users: int
    cycles: int = 1

    def expected_calls(self) -> int:
        per_cycle = naive_calls(self.users) if self.client == "naive" else batched_calls(self.users)
        return per_cycle * self.cycles

    def estimate(self) -> float:
        return bound(self.expected_calls())


@dataclass(slots=True)
class Row:
    job: Job
    status: str  # measured | computed, not run | not installed | failed: ...
    wall: float | None = None
    calls: int | None = None
    commands: int | None = None
    rejected: int | None = None
    cpu: float | None = None
    rss: float | None = None  # at the end
    peak_rss: float | None = None
    walls: list[float] = field(default_factory=list)
    complete: bool = True  # every user x role came back

    @property
    def measured(self) -> bool:
        return self.status.startswith("measured")

    @property
    def bound(self) -> float:
        calls = self.calls if self.calls is not None else self.job.expected_calls()
        return bound(calls - (self.rejected or 0))


Progress = Callable[[str], None]
T = TypeVar("T")


def bitrix24_rows(users: tuple[int, ...], naive_run: tuple[int, ...], fast_run: tuple[int, ...],
                  steady: tuple[tuple[int, int], ...], progress: Progress, alongside: Callable[[], T]
                  ) -> tuple[list[Row], T]:
    """Run every job (short ones alone, long ones side by side with `alongside`); rows in table order."""
    fast = fast_bitrix24_installed()
    jobs = [Job("ours", u) for u in users] + [Job("naive", u) for u in naive_run]
    jobs += [Job(variant, u) for u in fast_run for variant in FAST] if fast else []
    jobs += [Job("ours", *run) for run in steady]
    done, other = _run_all(jobs, progress, alongside)
    rows: list[Row] = []
    for u in users:
        for client in CLIENTS:
            job = Job(client, u)
            if job in done:
                rows.append(done[job])
            elif client in FAST and not fast:
                rows.append(Row(job, "not installed"))
            else:
                calls = job.expected_calls()
                rows.append(Row(job, "computed, not run", wall=bound(calls), calls=calls,
                                commands=u * ROLES + -(-u // PAGE)))
    rows += [done[Job("ours", *run)] for run in steady]
    return rows, other


def _run_all(jobs: list[Job], progress: Progress, alongside: Callable[[], T]) -> tuple[dict[Job, Row], T]:
    short = [j for j in jobs if j.estimate() <= PARALLEL_ABOVE_S]
    long = [j for j in jobs if j.estimate() > PARALLEL_ABOVE_S]
    done = {job: run_job(job, None, progress) for job in short}
    barrier = threading.Barrier(len(long)) if long else None
    with ThreadPoolExecutor(len(long) + 1) as pool:
        other = pool.submit(alongside)
        futures = {job: pool.submit(run_job, job, barrier, progress) for job in long}
        done.update((job, future.result()) for job, future in futures.items())
        return done, other.result()


def run_job(job: Job, barrier: threading.Barrier | None, progress: Progress) -> Row:
    """One client's cycle(s) against a fresh portal; a failure or time-out becomes the row's status."""
    timeout = job.estimate() * 1.5 + 120
    try:
        with child(f"portal-{job.users}", portal_main, PortalSpec(job.users, latency=LATENCY)) as portal, \
                child(f"{job.client}-{job.users}", bitrix24_main,
                      ClientRun(job.client, portal.ready["webhook"], job.cycles)) as client:
            if barrier is not None:
                barrier.wait(300)
            progress(f"bitrix24: {job.client}, {job.users:,} users x {job.cycles} cycle(s) "
                     f"(bound {job.estimate():.0f} s)")
            client.send("go")
            try:
                result = client.receive(timeout)
            except BenchError as exc:
                stats = portal.ask("stats")
                return Row(job, f"failed: {_last_line(exc)}", calls=stats["calls"], rejected=stats["rejected"],
                           commands=stats["commands"])
            stats = portal.ask("stats")
    except (BenchError, threading.BrokenBarrierError) as exc:
        if barrier is not None:
            barrier.abort()
        return Row(job, f"failed: {_last_line(exc)}")
    expected = job.users * ROLES
    return Row(job, "measured", wall=sum(result["walls"]), calls=stats["calls"], commands=stats["commands"],
               rejected=stats["rejected"], cpu=result["cpu_s"], rss=result["rss_mb"], peak_rss=result["peak_rss_mb"],
               walls=result["walls"],
               complete=result["users"] == job.users and result["answers"] == expected)


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1][:120] if lines else type(exc).__name__


def bitrix24_table(rows: list[Row]) -> str:
    body = [_cells(r) for r in rows]
    notes = [
        f"bound = max(0, calls - {BURST}) / {RATE:g} + one round trip ({LATENCY * 1000:.0f} ms): the least time "
        "the portal's leaky bucket allows for that many calls from an empty bucket (rate-limit answers excluded)",
        "computed, not run: calls from the client's request pattern, wall = the bound (for fast-bitrix24 a lower "
        "bound, hence >=); the naive client needs hours at 1,000+ users",
        "cmds/call: tasks.task.counters.get and user.get commands served per HTTP call; rate-limit answers: "
        "QUERY_LIMIT_EXCEEDED (503) from the simulator's bucket",
        "ours = the whole exporter (exporter.app.Exporter; its scheduler measures the cycle, as published in "
        "tasks_exporter_source_collection_duration_seconds), run until the snapshot is rendered and scraped once; "
        "naive and fast-bitrix24 are bare clients",
        "CPU, RSS: of the client process (VmRSS at the end, VmHWM peak; interpreter and imports included)",
        f"each run: its own simulator and client process; runs whose bound is over {PARALLEL_ABOVE_S:.0f} s "
        "ran side by side, and alongside the 1,000-cycle memory run (each waits for its own bucket almost all "
        "the time; the rest ran alone)",
    ]
    if fast_bitrix24_installed():
        notes.append(f"fast-bitrix24 {importlib.metadata.version('fast-bitrix24')}: BitrixAsync(webhook) with its "
                     "defaults (pool 50, 2 req/s, up to 50 requests at once), get_all('user.get') + "
                     "call('tasks.task.counters.get', [...]); slow(): the same inside `with bitrix.slow():` "
                     "(one request at a time), its documented remedy for rate-limit errors")
    return table("Bitrix24 cycle (5 roles, group 0; 50 ms per call; 2 req/s, burst 50)",
                 ["client", "users", "run", "wall s", "HTTP calls", "cmds/call", "rate-limit answers", "bound s",
                  "wall / bound", "CPU s", "RSS end MB", "peak RSS MB"], body, notes)


def _cells(r: Row) -> list[str]:
    users = f"{r.job.users:,}" + (f" x {r.job.cycles} cycles" if r.job.cycles > 1 else "")
    status = r.status
    if r.job.cycles > 1 and r.measured:
        status = "measured, back to back: " + " + ".join(seconds(w) for w in r.walls)
    if r.measured and not r.complete:
        status += " (INCOMPLETE answers)"
    approx = r.status.startswith("computed") and r.job.client in FAST
    per_call = f"{r.commands / r.calls:.1f}" if r.commands is not None and r.calls else "-"
    ratio = f"{r.wall / r.bound:.2f}" if r.wall is not None and r.measured else "-"
    return [r.job.client, users, status, seconds(r.wall, approx=approx), number(r.calls), per_call,
            number(r.rejected), seconds(r.bound) if r.measured or r.status.startswith("computed") else "-", ratio,
            seconds(r.cpu), number(r.rss, 1), number(r.peak_rss, 1)]
