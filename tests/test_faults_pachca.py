"""Pachca faults with both sources running: Pachca goes down and says why, Bitrix24 never notices."""

from __future__ import annotations

import json

import pytest

from exporter.app import Exporter, running
from exporter.config import Config, PachcaConfig, Secret
from exporter.simulator import pachca as pachcasim
from exporter.simulator import serve
from exporter.sources.pachca import PachcaSource
from tests.conftest import (
    FAIL_FAST,
    PACHCA_FAULT_REASONS,
    LogLines,
    down_with,
    eventually,
    samples,
    scrape_until,
    value,
)

FAULTS = PACHCA_FAULT_REASONS


def both_up(text: str) -> bool:
    ups = samples(text, "tasks_exporter_source_up")
    return len(ups) == 2 and all(v == 1 for v in ups.values())


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_pachca_fault_is_isolated_counted_and_recovered(portal_factory, json_log: LogLines, fault):
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
        pachca = PachcaSource(p_cfg, retry=FAIL_FAST)
        config = Config(bitrix24=(b24_cfg,), pachca=(p_cfg,))
        async with Exporter(config, "127.0.0.1", 0, sources=[b24, pachca], max_backoff=0.2) as exp:
            good = await scrape_until(exp.url, both_up)
            workspace.fault = fault
            bad = await scrape_until(exp.url, lambda t: down_with(t, FAULTS[fault], source="pachca"), timeout=15)
            assert samples(bad, "pachca_reminders") == samples(good, "pachca_reminders")
            assert value(bad, "tasks_exporter_source_up", source="bitrix24") == 1
            b24_calls = portal.sim.calls["batch"]
            await eventually(lambda: portal.sim.calls["batch"] >= b24_calls + 2)  # Bitrix24 keeps cycling
            workspace.fault = None
            await scrape_until(exp.url, both_up, timeout=15)
    events = json_log()
    assert not [e for e in events if "exception" in e]
    assert workspace.token not in json.dumps(events)


async def test_wrong_types_in_records_cost_only_those_fields_and_are_counted():
    workspace = pachcasim.generate_workspace(60)
    async with serve(pachcasim.create_app(workspace)) as url:
        config = Config(pachca=(PachcaConfig(name="ws", token=Secret(workspace.token),
                                             base_url=url + pachcasim.PREFIX, interval=0.1),))
        async with running(config) as exp:
            await eventually(lambda: exp.store.ready())
            workspace.fault = "wrong_types"
            text = await scrape_until(exp.url, lambda t: (value(t, "pachca_reminders_malformed") or 0) > 0)
    assert value(text, "tasks_exporter_source_up", source="pachca") == 1
    reminders = samples(text, "pachca_reminders")
    assert 0 < sum(reminders.values()) <= 60  # records that are not objects are skipped
    assert any("unknown" in (found.get("kind"), found.get("status"), found.get("priority"))
               for found in map(dict, reminders))
