"""Fault injection against the fake portal: the exporter keeps serving, says what failed, and recovers."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import log
from exporter.app import Exporter
from exporter.config import Config
from exporter.sources.bitrix24_client import OperationPause
from exporter.sources.retries import RetryPolicy
from tests.conftest import B24_FAULT_REASONS, eventually

FAULTS = B24_FAULT_REASONS


def metric(text: str, name: str) -> dict[frozenset, float]:
    return {frozenset(s.labels.items()): s.value
            for f in text_string_to_metric_families(text) for s in f.samples if s.name == name}


async def scrape(url: str) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{url}/metrics")).text


def up(text: str, target: str) -> float | None:
    return metric(text, "tasks_exporter_source_up").get(frozenset({("source", "bitrix24"), ("target", target)}))


def failures(text: str, target: str, reason: str) -> float:
    key = frozenset({("source", "bitrix24"), ("target", target), ("reason", reason)})
    return metric(text, "tasks_exporter_source_failures_total").get(key, 0.0)


@pytest.fixture
def log_lines():
    buffer = io.StringIO()
    log.configure("debug", "json", stream=buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


RETRY = RetryPolicy(attempts=2, rate_limit_attempts=3, base_delay=0.01, max_delay=0.02)
PAUSE = OperationPause(default=0.05, least=0.01)


async def exporter_for(server, name="acme", **config):
    config = {"interval": 0.1, "timeout": 0.5, **config}
    return server.config(name=name, **config), server.source(retry=RETRY, pause=PAUSE, name=name, **config)


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_fault_keeps_last_good_data_counts_the_reason_and_recovers(portal_factory, log_lines, fault):
    server = await portal_factory(users=3)
    server.sim.fault_retry_after = 0.05
    cfg, source = await exporter_for(server)
    async with Exporter(Config(bitrix24=(cfg,)), "127.0.0.1", 0, sources=[source], max_backoff=0.2) as exp:
        good = await eventually(lambda: _good(exp.url))
        server.sim.fault = fault
        bad = await eventually(lambda: _down_with(exp.url, FAULTS[fault]), timeout=15)
        assert metric(bad, "bitrix24_tasks") == metric(good, "bitrix24_tasks")
        assert metric(bad, "bitrix24_user_info") == metric(good, "bitrix24_user_info")
        server.sim.fault = None
        await eventually(lambda: _good(exp.url), timeout=15)
    events = log_lines()
    failed = [e for e in events if e["event"] == "cycle_failed"]
    assert failed and all(e["reason"] == FAULTS[fault] for e in failed)
    assert not [e for e in events if "exception" in e or e["level"] == "error"]
    assert server.sim.secret not in json.dumps(events)


async def _good(url: str) -> str | None:
    text = await scrape(url)
    return text if up(text, "acme") == 1 and metric(text, "bitrix24_tasks") else None


async def _down_with(url: str, reason: str) -> str | None:
    text = await scrape(url)
    return text if up(text, "acme") == 0 and failures(text, "acme", reason) >= 1 else None


async def test_one_portals_failure_never_touches_another(portal_factory, log_lines):
    healthy, broken = await portal_factory(users=2), await portal_factory(users=2)
    cfg_a, source_a = await exporter_for(healthy, name="a")
    cfg_b, source_b = await exporter_for(broken, name="b")
    async with Exporter(Config(bitrix24=(cfg_a, cfg_b)), "127.0.0.1", 0, sources=[source_a, source_b],
                        max_backoff=0.2) as exp:
        await eventually(lambda: exp.store.ready())
        broken.sim.fault = "http_500"
        text = await eventually(lambda: _when(exp.url, lambda t: up(t, "b") == 0))
        assert up(text, "a") == 1
        cycles_before = healthy.sim.calls["batch"]
        await eventually(lambda: healthy.sim.calls["batch"] > cycles_before + 2)
        text = await scrape(exp.url)
        assert up(text, "a") == 1 and up(text, "b") == 0


async def _when(url: str, check) -> str | None:
    text = await scrape(url)
    return text if check(text) else None


async def test_cycle_deadline_fails_a_hanging_cycle(portal_factory, log_lines):
    server = await portal_factory(users=2)
    # requests would wait 30 s; the cycle deadline does not
    cfg, source = await exporter_for(server, timeout=30.0, cycle_timeout=0.3)
    server.sim.fault = "timeout"
    async with Exporter(Config(bitrix24=(cfg,)), "127.0.0.1", 0, sources=[source], max_backoff=0.2) as exp:
        text = await eventually(lambda: _when(exp.url, lambda t: failures(t, "acme", "deadline") >= 1))
        assert up(text, "acme") == 0
