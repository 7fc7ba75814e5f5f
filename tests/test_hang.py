"""An API that accepts connections and never answers is reported within a minute at default settings,
while a cycle that is long only because of pacing or latency still succeeds: per-request timeouts and the
retry budget decide, not the cycle's length."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exporter.app import running
from exporter.config import Bitrix24Config, Config, PachcaConfig, RateLimit, Secret
from exporter.errors import ApiError
from exporter.ratelimit import LeakyBucket
from exporter.simulator import pachca as pachcasim
from exporter.simulator import serve
from exporter.snapshot import ApiTelemetry
from exporter.sources.bitrix24_client import Bitrix24Client
from exporter.sources.retries import RetryPolicy
from tests.conftest import down_with, eventually, samples, scrape_until, value

DETECTION_LIMIT = 60.0  # what issue 10 asks for, at default settings
DEFAULT_TIMEOUT = Bitrix24Config(name="x", webhook_url=Secret("x")).timeout
assert PachcaConfig(name="x", token=Secret("x")).timeout == DEFAULT_TIMEOUT


class SilentServer:
    """A loopback TCP server that accepts every connection, reads what arrives and never answers;
    with `trickle`, it answers a 200 whose body comes one byte at a time, `trickle` seconds apart."""

    def __init__(self, trickle: float | None = None) -> None:
        self.trickle = trickle
        self.connections = 0
        self.port = 0
        self.closed = False
        self._handlers: set[asyncio.Task[Any]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._writers.append(writer)
        try:
            if self.trickle is None:
                while await reader.read(65536):
                    pass
                return
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
            while not self.closed and not writer.is_closing():
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(self.trickle)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        """Drop every connection and wait for the handlers, so none is left for the loop to cancel."""
        self.closed = True
        for writer in self._writers:
            writer.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)


@contextlib.asynccontextmanager
async def silent_server(trickle: float | None = None) -> AsyncIterator[SilentServer]:
    silent = SilentServer(trickle)
    server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    silent.port = server.sockets[0].getsockname()[1]
    try:
        yield silent
    finally:
        server.close()
        await silent.close()
        await server.wait_closed()


async def down_with_timeout(exporter_url: str, source: str) -> str:
    """/metrics once `source` is down with a timeout counted, within the limit issue 10 sets."""
    return await scrape_until(exporter_url, lambda t: down_with(t, "timeout", source=source),
                              timeout=DETECTION_LIMIT)


async def up_after_one_cycle(exporter_url: str, source: str) -> str:
    return await scrape_until(exporter_url, lambda t: value(t, "tasks_exporter_source_up", source=source) == 1,
                              timeout=30)


# --- a hang at default settings ----------------------------------------------------------------------


@pytest.mark.slow
async def test_hanging_bitrix24_api_is_down_with_reason_timeout_within_a_minute() -> None:
    async with silent_server() as api:
        config = Config(bitrix24=(Bitrix24Config(
            name="acme", webhook_url=Secret(f"http://127.0.0.1:{api.port}/rest/1/s3cret/")),))
        started = time.monotonic()
        async with running(config) as exp:
            text = await down_with_timeout(exp.url, "bitrix24")
            elapsed = time.monotonic() - started
    assert elapsed < DETECTION_LIMIT
    # the first request was tried twice, each cut at the timeout: a third try would not fit the budget
    assert elapsed >= 2 * DEFAULT_TIMEOUT
    assert value(text, "tasks_exporter_api_requests_total", source="bitrix24", method="user.get",
                 outcome="timeout") == 2
    assert api.connections == 2


@pytest.mark.slow
async def test_hanging_pachca_api_is_down_with_reason_timeout_within_a_minute() -> None:
    async with silent_server() as api:
        config = Config(pachca=(PachcaConfig(
            name="ws", token=Secret("t0ken"), base_url=f"http://127.0.0.1:{api.port}/api/shared/v1"),))
        started = time.monotonic()
        async with running(config) as exp:
            text = await down_with_timeout(exp.url, "pachca")
            elapsed = time.monotonic() - started
    assert 2 * DEFAULT_TIMEOUT <= elapsed < DETECTION_LIMIT
    assert value(text, "tasks_exporter_api_requests_total", source="pachca", method="GET /tasks",
                 outcome="timeout") == 2
    assert api.connections == 2


@pytest.mark.slow
async def test_hang_in_the_middle_of_a_long_bitrix24_cycle_is_reported_within_a_minute(portal_factory: Any) -> None:
    """1,000 users: 102 calls, 49 at once and then 2 per second, 16 in flight and the rest queued. The
    portal stops answering when the bucket is full and the cycle has ~20 s to go."""
    server = await portal_factory(users=1000, latency=0.05)
    config = Config(bitrix24=(server.config(name="acme"),))
    async with running(config) as exp:
        await eventually(lambda: server.sim.calls["batch"] >= 60, timeout=60)
        server.sim.fault = "timeout"
        hang_began, answered = time.monotonic(), server.sim.calls["batch"]
        text = await down_with_timeout(exp.url, "bitrix24")
        elapsed = time.monotonic() - hang_began
    assert elapsed < DETECTION_LIMIT
    assert answered < 101  # 101 batches make the cycle: the hang met it midway
    assert value(text, "tasks_exporter_source_last_success_timestamp_seconds", source="bitrix24") is None


# --- long cycles are fine ----------------------------------------------------------------------------


async def test_bitrix24_cycle_many_times_the_request_timeout_succeeds(portal_factory: Any) -> None:
    """12 calls paced at 2 per second through 4 slots: each request waits up to 2 s for the bucket, four
    times its timeout, and answers in 0.05 s. Neither the wait nor the cycle's length is a timeout."""
    timeout = 0.5
    server = await portal_factory(users=100, latency=0.05, rate=2.0, burst=2)
    config = Config(bitrix24=(server.config(name="acme", timeout=timeout, max_concurrency=4,
                                            rate_limit=RateLimit(2.0, 2)),))
    async with running(config) as exp:
        text = await up_after_one_cycle(exp.url, "bitrix24")
    duration = value(text, "tasks_exporter_source_collection_duration_seconds", source="bitrix24")
    assert duration is not None
    assert duration >= 8 * timeout
    assert (value(text, "tasks_exporter_rate_limit_wait_seconds_total", source="bitrix24") or 0) >= 4 * timeout
    outcomes = {k: v for k, v in _outcomes(text, "bitrix24").items() if v}
    assert set(outcomes) == {"success"}, outcomes
    assert server.sim.rejected == 0


async def test_pachca_cycle_many_times_the_request_timeout_succeeds() -> None:
    """31 pages answered in 0.1 s each: a 3 s cycle with a 0.5 s request timeout."""
    timeout = 0.5
    workspace = pachcasim.generate_workspace(1500)
    workspace.latency = 0.1
    async with serve(pachcasim.create_app(workspace)) as url:
        config = Config(pachca=(PachcaConfig(name="ws", token=Secret(workspace.token),
                                             base_url=url + pachcasim.PREFIX, timeout=timeout),))
        async with running(config) as exp:
            text = await up_after_one_cycle(exp.url, "pachca")
    duration = value(text, "tasks_exporter_source_collection_duration_seconds", source="pachca")
    assert duration is not None
    assert duration >= 6 * timeout
    assert sum(samples(text, "pachca_reminders").values()) == 1500
    outcomes = {k: v for k, v in _outcomes(text, "pachca").items() if v}
    assert set(outcomes) == {"success"}, outcomes


def _outcomes(text: str, source: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for found, n in samples(text, "tasks_exporter_api_requests_total", source=source).items():
        outcome = dict(found)["outcome"]
        totals[outcome] = totals.get(outcome, 0) + n
    return totals


# --- the parts: a whole-request timeout, the retry budget, no second round of retries ------------------


def _client(url: str, *, timeout: float, retry: RetryPolicy) -> Bitrix24Client:
    return Bitrix24Client(url, LeakyBucket(1000.0, 1000), ApiTelemetry(), timeout=timeout, max_concurrency=2,
                          retry=retry)


async def failed_call(api: SilentServer, *, request_timeout: float, retry: RetryPolicy) -> tuple[ApiError, float]:
    """user.get sent to `api` by a client of its own, which must fail: the error, and the seconds it took."""
    client = _client(f"http://127.0.0.1:{api.port}/rest/1/s/", timeout=request_timeout, retry=retry)
    started = time.monotonic()
    try:
        with pytest.raises(ApiError) as failed:
            await client.call("user.get", {})
        return failed.value, time.monotonic() - started
    finally:
        await client.aclose()


async def test_timeout_covers_the_whole_request_even_when_bytes_trickle() -> None:
    """A per-read timeout (aiohttp's sock_read) restarts with every byte; the request's own timeout does not."""
    async with silent_server(trickle=0.05) as api:
        error, elapsed = await failed_call(api, request_timeout=0.3, retry=RetryPolicy(attempts=1))
    assert error.code == "timeout"
    assert elapsed < 1.5  # the body alone would take 50 s


async def test_retry_budget_stops_retries_that_could_not_finish_in_time() -> None:
    """timeout 0.3 s, budget 1.2 s, 10 attempts allowed: after three tries (0.9 s and backoff) a fourth
    could end past the budget, so it is never started."""
    retry = RetryPolicy(attempts=10, base_delay=0.01, max_delay=0.01, retry_budget=1.2)
    async with silent_server() as api:
        error, elapsed = await failed_call(api, request_timeout=0.3, retry=retry)
    assert error.code == "timeout"
    assert api.connections == 3
    assert 0.9 <= elapsed < 1.2 + 0.5


async def test_after_a_call_gives_up_unanswered_later_calls_are_tried_once_until_an_answer(
        portal_factory: Any) -> None:
    retry = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.01, retry_budget=0.8)
    server = await portal_factory(users=3)
    client = _client(server.webhook, timeout=0.3, retry=retry)
    tries: list[int] = []

    async def attempt() -> None:
        before = server.sim.received
        with contextlib.suppress(ApiError):
            await client.call("user.get", {})
        tries.append(server.sim.received - before)

    try:
        server.sim.fault = "timeout"
        await attempt()  # two tries: 0.3 s + backoff + 0.3 s fits 0.8 s, a third does not
        await attempt()  # the API did not answer the last call: one try
        server.sim.fault = None
        await attempt()  # answered: the client trusts the API again
        server.sim.fault = "timeout"
        await attempt()
    finally:
        await client.aclose()
    assert tries == [2, 1, 1, 2]
