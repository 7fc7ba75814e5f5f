"""Snapshot -> metric families. The only package where metric names live: a module per concern (bitrix24,
pachca, people, health), put together here.

Families are built fresh from the store on every render, so a series whose source disappeared
(a user who left, a reminder kind no longer seen) disappears from /metrics with it. Every producer yields
all of its families whatever the store holds (with no rows when there is nothing to say), so the families of
an empty store name everything the exporter can expose: that is `SnapshotCollector.describe()`.
exporter/render.py writes them as text.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.collector.bitrix24 import budget_families, org_families, portal_families, portal_of, portal_versions
from exporter.collector.health import (
    ConfigReloads,
    ExporterFaults,
    api_traffic,
    config_reloads,
    exporter_faults,
    source_health,
    structure_health,
)
from exporter.collector.pachca import workspace_families
from exporter.collector.people import PeopleFamilies
from exporter.config import PeopleConfig
from exporter.render import Family, Row, Section, Shard, Sharded, flatten
from exporter.snapshot import PortalSnapshot, ReminderTally, SourceState, Store

__all__ = ["ConfigReloads", "ExporterFaults", "SnapshotCollector"]


class SnapshotCollector(Collector):
    """Every metric of the exporter from the current store contents."""

    def __init__(self, store: Store, faults: ExporterFaults | None = None,
                 reloads: ConfigReloads | None = None, *, people: PeopleConfig | None = None) -> None:
        self._store = store
        self._faults = faults or ExporterFaults()
        self._reloads = reloads or ConfigReloads()
        self._people = PeopleFamilies(people)

    def use_people(self, people: PeopleConfig | None) -> None:
        """A reload changed the `people:` section: the next render joins by it."""
        self._people = PeopleFamilies(people)

    def families(self) -> Iterator[Family]:
        yield from self.snapshot_families()
        yield from self.live_families()

    def snapshot_families(self) -> Iterator[Family]:
        """What changes only when a cycle ends, as whole families (see snapshot_sections)."""
        return flatten(self.snapshot_sections())

    def snapshot_sections(self) -> Iterator[Section]:
        """What changes only when a cycle ends: rendered once per change, each source's rows of a family apart
        from the others' (a render re-makes only what changed; exporter/incremental.py). Families that change at
        every cycle come last: a render's work over the whole text (its CRC) starts at the first change. Besides
        the sources' families:

        tasks_exporter_build_info{version="0.1.0",python_version="3.11.7"} 1.0
        """
        states = sorted(self._store.states(), key=lambda s: (s.key.source, s.key.target))
        portals = [s for s in states if isinstance(s.data, PortalSnapshot)]
        yield _sharded("bitrix24", portal_families, portals, portal_versions)
        yield _sharded("bitrix24_org", org_families, portals, lambda s: (portal_of(s).org,) * 4)
        yield _sharded("pachca", workspace_families, [s for s in states if isinstance(s.data, ReminderTally)])
        yield from self._people.families(states)
        yield _sharded("bitrix24_budget", budget_families, portals)
        yield _sharded("source_health", source_health, states)
        yield _sharded("structure_health", structure_health,
                       [s for s in portals if isinstance(s.data, PortalSnapshot) and s.data.structure is not None])
        info = Family.gauge("tasks_exporter_build_info", "Version of tasks-exporter, value 1.",
                            labels=["version", "python_version"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info

    def live_families(self) -> Iterator[Family]:
        """API traffic, which moves during a cycle (one can last minutes), the exporter's own faults
        (a failing snapshot render must still be counted) and its config reloads: small, rendered per scrape."""
        yield from api_traffic(self._store)
        yield from exporter_faults(self._faults)
        yield from config_reloads(self._reloads)

    def collect(self) -> Iterator[Metric]:
        """The same families as prometheus_client objects, for registering in a CollectorRegistry."""
        for family in self.families():
            yield _client_metric(family, family.rows)

    @staticmethod
    def describe() -> Iterator[Metric]:
        """Every family the collector can produce, without samples: prometheus_client's describe() (a
        registry checks names with it) and the metric-name contract the alerts and dashboard are tested on."""
        for family in SnapshotCollector(Store()).families():
            yield _client_metric(family, ())


def _sharded(name: str, produce: Callable[[list[SourceState]], Iterator[Family]], states: list[SourceState],
             versions: Callable[[SourceState], tuple[object, ...]] | None = None) -> Sharded:
    """`produce`'s families for `states`, one shard per state: every producer adds each state's rows in turn,
    so its families for all states are the shards' rows one after the other. `versions` says what each family's
    rows of a state are made from; by default the whole state (its version: every change of it)."""
    families = list(produce([]))
    return Sharded(name, families, [
        Shard(s.key, versions(s) if versions else (s.version,) * len(families), functools.partial(produce, [s]))
        for s in states])


def _client_metric(family: Family, rows: Iterable[Row]) -> Metric:
    kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    metric = kind(family.name, family.help, labels=list(family.labels))
    for values, value in rows:
        metric.add_metric(list(values), value)
    return metric
