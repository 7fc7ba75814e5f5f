"""Pachca faults with both sources running: Pachca goes down and says why, Bitrix24 never notices."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import log
from exporter.app import Exporter
from exporter.config import Config, PachcaConfig, Secret
from exporter.simulator import pachca as pachcasim
from exporter.simulator import serve
from exporter.sources.pachca import PachcaSource
from exporter.sources.retries import RetryPolicy
from tests.conftest import PACHCA_FAULT_REASONS, eventually

FAULTS = PACHCA_FAULT_REASONS


def metric(text: str, name: str, **labels: str) -> dict[frozenset, float]:
    want = set(labels.items())
    return {frozenset(s.labels.items()): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name and want <= set(s.labels.items())}


def one(text: str, name: str, **labels: str) -> float | None:
    found = metric(text, name, **labels)
    return next(iter(found.values())) if found else None


@pytest.fixture
def log_buffer():
    buffer = io.StringIO()
    log.configure("debug", "json", stream=buffer)
    return buffer


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_pachca_fault_is_isolated_counted_and_recovered(portal_factory, log_buffer, fault):
    assert set(FAULTS) | {"wrong_types"} == set(pachcasim.FAULTS)
    portal = await portal_factory(users=2, rate=1000.0, burst=1000)
    b24_cfg = portal.config(name="acme", interval=0.1)
    b24 = portal.source(name="acme", interval=0.1)
    workspace = pachcasim.generate_workspace(120)
    workspace.retry_after = 0.05
    workspace.hang_seconds = 5.0
    async with serve(pachcasim.create_app(workspace)) as url:
        p_cfg = PachcaConfig(name="ws", token=Secret(workspace.token), base_url=url + pachcasim.PREFIX,
                             interval=0.1, timeout=0.4)
        pachca = PachcaSource(p_cfg, retry=RetryPolicy(attempts=2, rate_limit_attempts=2, base_delay=0.01,
                                                        max_delay=0.02))
        config = Config(bitrix24=(b24_cfg,), pachca=(p_cfg,))
        async with Exporter(config, "127.0.0.1", 0, sources=[b24, pachca],
                            max_backoff=0.2) as exp, httpx.AsyncClient() as client:
            async def scrape() -> str:
                return (await client.get(f"{exp.url}/metrics")).text

            async def both_up() -> str | None:
                text = await scrape()
                ups = metric(text, "tasks_exporter_source_up")
                return text if len(ups) == 2 and all(v == 1 for v in ups.values()) else None

            good = await eventually(both_up)
            workspace.fault = fault

            async def pachca_down() -> str | None:
                text = await scrape()
                failed = one(text, "tasks_exporter_source_failures_total", source="pachca", reason=FAULTS[fault])
                return text if one(text, "tasks_exporter_source_up", source="pachca") == 0 and failed else None

            bad = await eventually(pachca_down, timeout=15)
            assert metric(bad, "pachca_reminders") == metric(good, "pachca_reminders")
            assert one(bad, "tasks_exporter_source_up", source="bitrix24") == 1
            b24_calls = portal.sim.calls["batch"]
            await eventually(lambda: portal.sim.calls["batch"] >= b24_calls + 2)  # Bitrix24 keeps cycling
            workspace.fault = None
            await eventually(both_up, timeout=15)
    events = [json.loads(line) for line in log_buffer.getvalue().splitlines()]
    assert not [e for e in events if "exception" in e]
    assert workspace.token not in log_buffer.getvalue()


async def test_wrong_types_in_records_cost_only_those_fields_and_are_counted(log_buffer):
    workspace = pachcasim.generate_workspace(60)
    async with serve(pachcasim.create_app(workspace)) as url:
        from exporter.app import running

        config = Config(pachca=(PachcaConfig(name="ws", token=Secret(workspace.token),
                                             base_url=url + pachcasim.PREFIX, interval=0.1),))
        async with running(config) as exp, httpx.AsyncClient() as client:
            await eventually(lambda: exp.store.ready())
            workspace.fault = "wrong_types"

            async def malformed() -> str | None:
                text = (await client.get(f"{exp.url}/metrics")).text
                return text if (one(text, "pachca_reminders_malformed") or 0) > 0 else None

            text = await eventually(malformed)
    assert one(text, "tasks_exporter_source_up", source="pachca") == 1
    assert 0 < sum(metric(text, "pachca_reminders").values()) <= 60  # records that are not objects are skipped
    assert any(dict(k).get("kind") == "unknown" or dict(k).get("status") == "unknown"
               or dict(k).get("priority") == "unknown" for k in metric(text, "pachca_reminders"))
