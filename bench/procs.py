"""Child processes for the benchmark: every simulator, client and exporter runs in its own process.

Why: a measured process must not share its event loop, CPU time or memory with the fake API it talks to
(or with whatever ran before it), so each one is spawned fresh and reports over a pipe.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

_SPAWN = multiprocessing.get_context("spawn")


class BenchError(RuntimeError):
    """A child process failed or did not answer in time."""


@dataclass
class Child:
    """The parent's end of a spawned process that answers messages over a pipe."""

    name: str
    process: BaseProcess
    conn: Connection
    ready: Any = None  # the first message the child sent

    def receive(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise BenchError(f"{self.name}: no answer within {timeout:g}s")
        try:
            message = self.conn.recv()
        except EOFError:
            raise BenchError(f"{self.name}: exited (code {self.process.exitcode})") from None
        if isinstance(message, dict) and "error" in message:
            raise BenchError(f"{self.name} failed:\n{message['error']}")
        return message

    def ask(self, message: Any, timeout: float = 30.0) -> Any:
        self.conn.send(message)
        return self.receive(timeout)

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def stop(self) -> None:
        if self.process.is_alive():
            with suppress(BrokenPipeError, OSError):
                self.conn.send("stop")
            self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()


@contextmanager
def child(name: str, target: Callable[..., None], *args: Any, ready_timeout: float = 60.0) -> Iterator[Child]:
    """Spawn `target(conn, *args)`; the first message it sends (its 'ready' answer) is `child.ready`."""
    parent, mine = _SPAWN.Pipe()
    process = _SPAWN.Process(target=target, args=(mine, *args), name=name, daemon=True)
    process.start()
    mine.close()
    handle = Child(name, process, parent)
    try:
        handle.ready = handle.receive(ready_timeout)
        yield handle
    finally:
        handle.stop()


def run_child(conn: Connection, main: Coroutine[Any, Any, None]) -> None:
    """Run a child's coroutine; an exception goes back to the parent as text instead of a silent exit."""
    from exporter import log

    log.configure("error")
    # a client that goes away mid-request (a cancelled cycle, a stopped benchmark) is not news here
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    try:
        asyncio.run(main)
    except Exception:
        with suppress(BrokenPipeError, OSError):
            conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


async def next_message(conn: Connection) -> Any:
    """Wait for the parent without blocking this process's event loop; 'stop' on a closed pipe."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    except EOFError:
        return "stop"


def memory_mb(field: str = "VmRSS") -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in MB, from /proc/self/status."""
    with open(f"/proc/{os.getpid()}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- simulators -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortalSpec:
    users: int
    latency: float = 0.05
    rate_limited: bool = True
    rate: float = 2.0
    burst: int = 50


@dataclass(frozen=True, slots=True)
class WorkspaceSpec:
    reminders: int
    latency: float = 0.05
    rate_limit: float | None = 50.0  # Pachca: ~50 requests/s per token


def portal_main(conn: Connection, spec: PortalSpec) -> None:
    run_child(conn, _serve_portal(conn, spec))


def workspace_main(conn: Connection, spec: WorkspaceSpec) -> None:
    run_child(conn, _serve_workspace(conn, spec))


async def _serve_portal(conn: Connection, spec: PortalSpec) -> None:
    from exporter.simulator import bitrix24 as b24sim
    from exporter.simulator import serve

    sim = b24sim.generate_portal(spec.users, hidden=0, groups=0, latency=spec.latency,
                                 rate_limited=spec.rate_limited, rate=spec.rate, burst=spec.burst)
    app = b24sim.create_app(sim)
    direct: Counter[int] = Counter()  # status of calls other than batch: each one is one command

    from aiohttp import web

    @web.middleware
    async def count_direct(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if not request.match_info.get("method", "").startswith("batch"):
            direct[response.status] += 1
        return response

    app.middlewares.append(count_direct)

    def stats() -> dict[str, Any]:
        calls = sum(sim.calls.values())
        return {"calls": calls, "rejected": sim.rejected, "commands": sim.commands + direct[200],
                "max_batch": sim.max_batch, "max_in_flight": sim.max_in_flight}

    async with serve(app) as url:
        conn.send({"webhook": f"{url}{sim.webhook_path}"})
        await _answer_stats(conn, stats)


async def _serve_workspace(conn: Connection, spec: WorkspaceSpec) -> None:
    from exporter.simulator import pachca as pachcasim
    from exporter.simulator import serve

    sim = pachcasim.generate_workspace(spec.reminders, users=50)
    sim.latency = spec.latency
    sim.rate_limit = spec.rate_limit

    def stats() -> dict[str, Any]:
        statuses = Counter(r.status for r in sim.requests)
        return {"calls": len(sim.requests), "rejected": statuses[429]}

    async with serve(pachcasim.create_app(sim)) as url:
        conn.send({"base_url": f"{url}{pachcasim.PREFIX}", "token": sim.token})
        await _answer_stats(conn, stats)


async def _answer_stats(conn: Connection, stats: Callable[[], dict[str, Any]]) -> None:
    while (message := await next_message(conn)) != "stop":
        if message == "stats":
            conn.send(stats())
