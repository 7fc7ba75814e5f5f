"""The snapshot collector: its own text renderer says exactly what prometheus_client would say."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import SnapshotCollector
from exporter.render import Family, render
from exporter.snapshot import (
    CounterQuery,
    PachcaUser,
    PortalSnapshot,
    PortalUser,
    ReminderTally,
    SourceKey,
    Store,
)
from tests.conftest import register


def every_sample(text: str) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    """(name, labels, value) of each sample of an exposition, in a stable order."""
    found = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.append((s.name, tuple(sorted(s.labels.items())), s.value))
    return sorted(found, key=lambda x: (x[0], x[1]))


def store_with_data() -> Store:
    store = Store()
    key = SourceKey("bitrix24", 'acme "main"')
    telemetry = register(store, key)
    telemetry.request("batch", "success")
    telemetry.error("QUERY_LIMIT_EXCEEDED")
    counters = {CounterQuery(1, 0, "all"): (("expired", 3.0), ("new_comments", 0.0)),
                CounterQuery(2, 5, "auditor"): (("wo_deadline", 12.0),)}
    users = (PortalUser(1, 'Иван "Ваня" Петров\\'), PortalUser(2, "line\nbreak"))
    store.succeeded(key, PortalSnapshot(users, counters, hidden_users=1, failed_commands=0,
                                        operating_seconds={"tasks.task.counters.get": 1.5}), 0.2)
    pkey = SourceKey("pachca", "ws")
    register(store, pkey)
    store.succeeded(pkey, ReminderTally(by_status={("undone", "call", "2"): 4}, overdue={("call", "2"): 1},
                                        due_soon={"call": 2}, without_due_date={"done": 1},
                                        performer={(7, "undone"): 4}, performer_overdue={7: 1},
                                        oldest_overdue_seconds=3600.5, total=4, pages=1,
                                        users=(PachcaUser(7, "Anna", "Sales", ("Backend",)),),
                                        users_read_at=1.7e9), 0.1)
    return store


def test_own_renderer_matches_prometheus_client():
    collector = SnapshotCollector(store_with_data())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ours = render(collector.families()).decode()
    reference = generate_latest(registry).decode()
    assert every_sample(ours) == every_sample(reference)
    assert [line for line in ours.splitlines() if line.startswith("#")] == [
        line for line in reference.splitlines() if line.startswith("#")]


def test_label_values_are_escaped():
    text = render(SnapshotCollector(store_with_data()).families()).decode()
    assert 'name="Иван \\"Ваня\\" Петров\\\\"' in text
    assert 'name="line\\nbreak"' in text
    assert 'portal="acme \\"main\\""' in text


def test_special_values():
    family = Family("x", "h", labels=[], rows=[((), math.inf), ((), -math.inf)])
    text = render([family, Family("y", "h", labels=[], rows=[((), math.nan)])]).decode()
    assert "x +Inf\nx -Inf\n" in text
    assert "y NaN\n" in text


def test_every_source_reason_starts_at_zero():
    text = render(SnapshotCollector(store_with_data()).families()).decode()
    failures = [s for s in every_sample(text) if s[0] == "tasks_exporter_source_failures_total"]
    assert len(failures) == 2 * 9
    assert all(value == 0 for *_, value in failures)


def test_describe_names_every_family_a_populated_store_exposes():
    described = list(SnapshotCollector.describe())
    populated = {(f.name, f.kind) for f in SnapshotCollector(store_with_data()).families()}
    assert {(m.name, m.type) for m in described} == populated
    assert all(not m.samples for m in described)


def test_a_registry_refuses_a_second_collector_with_the_same_names():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(Store()))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(SnapshotCollector(store_with_data()))
