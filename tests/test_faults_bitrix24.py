"""Fault injection against the fake portal: the exporter keeps serving, says what failed, and recovers."""

from __future__ import annotations

import json

import pytest

from exporter.app import Exporter
from exporter.config import Config
from tests.conftest import (
    B24_FAULT_REASONS,
    FAIL_FAST,
    LogLines,
    down_with,
    eventually,
    samples,
    scrape,
    scrape_until,
    value,
)

FAULTS = B24_FAULT_REASONS


def up(text: str, target: str) -> float | None:
    return value(text, "tasks_exporter_source_up", source="bitrix24", target=target)


def serving_acme(text: str) -> bool:
    return up(text, "acme") == 1 and bool(samples(text, "bitrix24_tasks"))


def exporter_for(server, name="acme", **config):
    config = {"interval": 0.1, "timeout": 0.5, **config}
    return server.config(name=name, **config), server.source(retry=FAIL_FAST, name=name, **config)


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_fault_keeps_last_good_data_counts_the_reason_and_recovers(portal_factory, json_log: LogLines, fault):
    server = await portal_factory(users=3)
    server.sim.fault_retry_after = 0.05
    cfg, source = exporter_for(server)
    async with Exporter(Config(bitrix24=(cfg,)), "127.0.0.1", 0, sources=[source], max_backoff=0.2) as exp:
        good = await scrape_until(exp.url, serving_acme)
        server.sim.fault = fault
        bad = await scrape_until(exp.url, lambda t: down_with(t, FAULTS[fault], target="acme"), timeout=15)
        assert samples(bad, "bitrix24_tasks") == samples(good, "bitrix24_tasks")
        assert samples(bad, "bitrix24_user_info") == samples(good, "bitrix24_user_info")
        server.sim.fault = None
        await scrape_until(exp.url, serving_acme, timeout=15)
    events = json_log()
    failed = [e for e in events if e["event"] == "cycle_failed"]
    assert failed
    assert all(e["reason"] == FAULTS[fault] for e in failed)
    assert not [e for e in events if "exception" in e or e["level"] == "error"]
    assert server.sim.secret not in json.dumps(events)


async def test_one_portals_failure_never_touches_another(portal_factory):
    healthy, broken = await portal_factory(users=2), await portal_factory(users=2)
    cfg_a, source_a = exporter_for(healthy, name="a")
    cfg_b, source_b = exporter_for(broken, name="b")
    async with Exporter(Config(bitrix24=(cfg_a, cfg_b)), "127.0.0.1", 0, sources=[source_a, source_b],
                        max_backoff=0.2) as exp:
        await eventually(lambda: exp.store.ready())
        broken.sim.fault = "http_500"
        text = await scrape_until(exp.url, lambda t: up(t, "b") == 0)
        assert up(text, "a") == 1
        cycles_before = healthy.sim.calls["batch"]
        await eventually(lambda: healthy.sim.calls["batch"] > cycles_before + 2)
        text = await scrape(exp.url)
        assert up(text, "a") == 1
        assert up(text, "b") == 0


async def test_cycle_deadline_fails_a_hanging_cycle(portal_factory):
    server = await portal_factory(users=2)
    # requests would wait 30 s; the cycle deadline does not
    cfg, source = exporter_for(server, timeout=30.0, cycle_timeout=0.3)
    server.sim.fault = "timeout"
    async with Exporter(Config(bitrix24=(cfg,)), "127.0.0.1", 0, sources=[source], max_backoff=0.2) as exp:
        await scrape_until(exp.url, lambda t: down_with(t, "deadline", target="acme"))
