"""Snapshot -> metric families -> text exposition. The only module where metric names live.

Families are built fresh from the store on every render, so a series whose source disappeared
(a user who left, a reminder kind no longer seen) disappears from /metrics with it. The renderer writes
the text format straight from the families (the biggest one streams from the snapshot), so a render
at 100,000 series costs the text's size in memory, not an object per series.
"""

from __future__ import annotations

import io
import math
import platform
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.snapshot import PortalSnapshot, ReminderTally, SourceState, Store

Row = tuple[Sequence[str], float]


@dataclass(slots=True)
class Family:
    """One metric family; `rows` may be a generator that is read once, at render time."""

    name: str
    help: str
    labels: Sequence[str]
    kind: str = "gauge"  # or "counter": the exposed name then ends in _total
    rows: Iterable[Row] = field(default_factory=list)

    def add_metric(self, values: Sequence[str], value: float) -> None:
        assert isinstance(self.rows, list)
        self.rows.append((values, value))


def GaugeFamily(name: str, help: str, labels: Sequence[str]) -> Family:
    return Family(name, help, labels)


def CounterFamily(name: str, help: str, labels: Sequence[str]) -> Family:
    return Family(name, help, labels, kind="counter")

FAILURE_REASONS = ("auth", "rate_limited", "server_error", "timeout", "network_error", "invalid_response",
                   "api_error", "deadline", "internal")


@dataclass(slots=True)
class ExporterFaults:
    """The exporter's own bugs that it survived, counted where they happen (exporter/server.py)."""

    render_failures: int = 0
    handler_failures: int = 0


@dataclass(slots=True)
class ConfigReloads:
    """How the latest load of the config went (start-up is a successful one); set by exporter/reload.py."""

    successful: bool = True
    success_timestamp: float = field(default_factory=time.time)


class SnapshotCollector(Collector):
    """Every metric of the exporter from the current store contents."""

    def __init__(self, store: Store, faults: ExporterFaults | None = None,
                 reloads: ConfigReloads | None = None) -> None:
        self._store = store
        self._faults = faults or ExporterFaults()
        self._reloads = reloads or ConfigReloads()

    def families(self) -> Iterator[Family]:
        yield from self.snapshot_families()
        yield from self.live_families()

    def snapshot_families(self) -> Iterator[Family]:
        """What changes only when a cycle ends: rendered once per change."""
        states = sorted(self._store.states(), key=lambda s: (s.key.source, s.key.target))
        yield from _bitrix24([s for s in states if isinstance(s.data, PortalSnapshot)])
        yield from _pachca([s for s in states if isinstance(s.data, ReminderTally)])
        yield from _source_health(states)
        info = GaugeFamily("tasks_exporter_build_info", "Version of tasks-exporter, value 1.",
                           labels=["version", "python_version"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info

    def live_families(self) -> Iterator[Family]:
        """API traffic, which moves during a cycle (one can last minutes), the exporter's own faults
        (a failing snapshot render must still be counted) and its config reloads: small, rendered per scrape."""
        yield from _api_traffic(self._store)
        yield from _faults(self._faults)
        yield from _reloads(self._reloads)

    def render(self) -> bytes:
        """The text exposition (format 0.0.4) of the snapshot families."""
        return render(self.snapshot_families())

    def render_live(self) -> bytes:
        return render(self.live_families())

    def collect(self) -> Iterator[Metric]:
        """The same families as prometheus_client objects, for registering in a CollectorRegistry."""
        for family in self.families():
            kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
            metric = kind(family.name, family.help, labels=list(family.labels))
            for values, value in family.rows:
                metric.add_metric(list(values), value)
            yield metric


def render(families: Iterable[Family]) -> bytes:
    out = io.BytesIO()
    for family in families:
        name = family.name + "_total" if family.kind == "counter" else family.name
        help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
        out.write(f"# HELP {name} {help_text}\n# TYPE {name} {family.kind}\n".encode())
        labels = family.labels
        for values, value in family.rows:
            if labels:
                pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(labels, values, strict=True))
                out.write(f"{name}{{{pairs}}} {_number(value)}\n".encode())
            else:
                out.write(f"{name} {_number(value)}\n".encode())
    return out.getvalue()


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _bitrix24(states: list[SourceState]) -> Iterator[Family]:
    tasks = Family(
        "bitrix24_tasks", "Bitrix24 task counter (tasks.task.counters.get) per user, workgroup and role; "
        "group_id 0 is all groups. Muted tasks are not counted.",
        labels=["portal", "user_id", "group_id", "role", "counter"], rows=_task_rows(states))
    info = GaugeFamily("bitrix24_user_info", "A monitored Bitrix24 user, value 1.",
                       labels=["portal", "user_id", "name"])
    users = GaugeFamily("bitrix24_users", "Users monitored in the last good cycle.", labels=["portal"])
    hidden = GaugeFamily(
        "bitrix24_users_hidden", "Monitored users whose counters the webhook could not see (empty answer); "
        "reading other users' counters needs an administrator's webhook.", labels=["portal"])
    failed = GaugeFamily("bitrix24_commands_failed",
                         "Batch commands that failed in the last good cycle (their last values are kept).",
                         labels=["portal"])
    operating = GaugeFamily(
        "bitrix24_method_operating_seconds", "Execution time the portal has accounted to a REST method "
        "in its 10-minute window (time.operating); calls are blocked above the portal's limit.",
        labels=["portal", "method"])
    for state in states:
        data = state.data
        assert isinstance(data, PortalSnapshot)
        portal = state.key.target
        for u in data.users:
            info.add_metric([portal, str(u.user_id), u.name], 1)
        users.add_metric([portal], len(data.users))
        hidden.add_metric([portal], data.hidden_users)
        failed.add_metric([portal], data.failed_commands)
        for method, seconds in sorted(data.operating_seconds.items()):
            operating.add_metric([portal, method], seconds)
    yield from (tasks, info, users, hidden, failed, operating)


def _task_rows(states: list[SourceState]) -> Iterator[Row]:
    """bitrix24_tasks streams from the snapshots: the largest family is never held as rows."""
    for state in states:
        assert isinstance(state.data, PortalSnapshot)
        portal = state.key.target
        for q, values in state.data.counters.items():
            user, group = str(q.user_id), str(q.group_id)
            for counter, value in values:
                yield (portal, user, group, q.role, counter), value


def _pachca(states: list[SourceState]) -> Iterator[Family]:
    reminders = GaugeFamily("pachca_reminders", "Pachca reminders by status, kind and priority.",
                            labels=["workspace", "status", "kind", "priority"])
    overdue = GaugeFamily("pachca_reminders_overdue",
                          "Open (undone) reminders whose due_at is in the past.",
                          labels=["workspace", "kind", "priority"])
    due_soon = GaugeFamily("pachca_reminders_due_soon",
                           "Open reminders due within the configured due_soon window.",
                           labels=["workspace", "kind"])
    no_due = GaugeFamily("pachca_reminders_without_due_date", "Reminders with no due_at.",
                         labels=["workspace", "status"])
    performer = GaugeFamily("pachca_performer_reminders",
                            "Reminders per performer (a reminder counts once for each performer).",
                            labels=["workspace", "performer_id", "status"])
    performer_overdue = GaugeFamily("pachca_performer_reminders_overdue",
                                    "Overdue open reminders per performer.",
                                    labels=["workspace", "performer_id"])
    oldest = GaugeFamily("pachca_reminder_oldest_overdue_seconds",
                         "How long the most overdue open reminder is past its due time (0 if none).",
                         labels=["workspace"])
    info = GaugeFamily("pachca_user_info", "A Pachca user seen as a performer, value 1.",
                       labels=["workspace", "user_id", "name"])
    malformed = GaugeFamily(
        "pachca_reminders_malformed", "Reminders in the last cycle with a field that could not be read; "
        "they are counted with the label value 'unknown' where that field mattered.", labels=["workspace"])
    for state in states:
        t = state.data
        assert isinstance(t, ReminderTally)
        ws = state.key.target
        for (status, kind, priority), n in sorted(t.by_status.items()):
            reminders.add_metric([ws, status, kind, priority], n)
        for (kind, priority), n in sorted(t.overdue.items()):
            overdue.add_metric([ws, kind, priority], n)
        for kind, n in sorted(t.due_soon.items()):
            due_soon.add_metric([ws, kind], n)
        for status, n in sorted(t.without_due_date.items()):
            no_due.add_metric([ws, status], n)
        for (pid, status), n in sorted(t.performer.items()):
            performer.add_metric([ws, str(pid), status], n)
        for pid, n in sorted(t.performer_overdue.items()):
            performer_overdue.add_metric([ws, str(pid)], n)
        oldest.add_metric([ws], t.oldest_overdue_seconds)
        malformed.add_metric([ws], t.malformed)
        for uid, name in sorted(t.user_names.items()):
            info.add_metric([ws, str(uid), name], 1)
    yield from (reminders, overdue, due_soon, no_due, performer, performer_overdue, oldest, info, malformed)


def _source_health(states: list[SourceState]) -> Iterator[Family]:
    labels = ["source", "target"]
    up = GaugeFamily("tasks_exporter_source_up",
                     "1 when the source's last collection cycle succeeded.", labels=labels)
    last = GaugeFamily("tasks_exporter_source_last_success_timestamp_seconds",
                       "Unix time of the source's last successful cycle.", labels=labels)
    duration = GaugeFamily("tasks_exporter_source_collection_duration_seconds",
                           "Wall time of the source's last collection cycle.", labels=labels)
    interval = GaugeFamily("tasks_exporter_source_interval_seconds",
                           "Configured collection interval.", labels=labels)
    bound = GaugeFamily(
        "tasks_exporter_source_cycle_bound_seconds", "Least time the API's rate limit allows for one cycle "
        "of this size; above the interval, cycles run back to back and data is older than the interval.",
        labels=labels)
    failures = CounterFamily("tasks_exporter_source_failures",
                             "Failed collection cycles by reason.", labels=[*labels, "reason"])
    for s in states:
        key = [s.key.source, s.key.target]
        up.add_metric(key, 1 if s.up else 0)
        if s.last_success is not None:
            last.add_metric(key, s.last_success)
        if s.last_duration is not None:
            duration.add_metric(key, s.last_duration)
        interval.add_metric(key, s.interval)
        bound.add_metric(key, s.cycle_bound)
        # every reason is exported from the start, so increase() sees the first failure too
        for reason, n in sorted({**dict.fromkeys(FAILURE_REASONS, 0), **s.failures}.items()):
            failures.add_metric([*key, reason], n)
    yield from (up, last, duration, interval, bound, failures)


def _api_traffic(store: Store) -> Iterator[Family]:
    labels = ["source", "target"]
    requests = CounterFamily("tasks_exporter_api_requests", "HTTP requests to the APIs by outcome.",
                             labels=[*labels, "method", "outcome"])
    errors = CounterFamily("tasks_exporter_api_errors",
                           "Errors the APIs answered, by API error code (including batch commands).",
                           labels=[*labels, "code"])
    waited = CounterFamily("tasks_exporter_rate_limit_wait_seconds",
                           "Time spent waiting for the client-side rate limit or a method pause.",
                           labels=labels)
    for key, telemetry in sorted(store.telemetry().items(), key=lambda kv: (kv[0].source, kv[0].target)):
        counts, codes, wait = telemetry.copy()
        base = [key.source, key.target]
        for (method, outcome), n in sorted(counts.items()):
            requests.add_metric([*base, method, outcome], n)
        for code, n in sorted(codes.items()):
            errors.add_metric([*base, code], n)
        waited.add_metric(base, wait)
    yield from (requests, errors, waited)


def _faults(faults: ExporterFaults) -> Iterator[Family]:
    """Bugs the exporter survived, e.g. `tasks_exporter_render_failures_total 0.0`."""
    renders = CounterFamily("tasks_exporter_render_failures",
                            "Renders of /metrics that raised (a bug, logged as render_failed); the last good "
                            "exposition is served meanwhile.", labels=[])
    renders.add_metric([], faults.render_failures)
    handlers = CounterFamily("tasks_exporter_http_handler_failures",
                             "HTTP requests answered 500 because a handler raised (a bug, logged as "
                             "request_failed).", labels=[])
    handlers.add_metric([], faults.handler_failures)
    yield from (renders, handlers)


def _reloads(reloads: ConfigReloads) -> Iterator[Family]:
    """Named as Prometheus names its own, e.g. `tasks_exporter_config_last_reload_successful 1.0`."""
    successful = GaugeFamily("tasks_exporter_config_last_reload_successful",
                             "1 when the latest config reload (SIGHUP or POST /-/reload) succeeded; start-up "
                             "counts as one.", labels=[])
    successful.add_metric([], 1 if reloads.successful else 0)
    at = GaugeFamily("tasks_exporter_config_last_reload_success_timestamp_seconds",
                     "Unix time of the latest successful config load (start-up or reload).", labels=[])
    at.add_metric([], reloads.success_timestamp)
    yield from (successful, at)
