"""Snapshot -> metric families. The only module where metric names live.

Families are built fresh from the store on every render, so a series whose source disappeared
(a user who left, a reminder kind no longer seen) disappears from /metrics with it. Every producer yields
all of its families whatever the store holds (with no rows when there is nothing to say), so the families of
an empty store name everything the exporter can expose: that is `SnapshotCollector.describe()`.
exporter/render.py writes them as text.
"""

from __future__ import annotations

import functools
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, get_args

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.config import PeopleConfig
from exporter.errors import FailureReason
from exporter.people import PeopleMatch, match_by_email
from exporter.render import Family, Row, Section, Shard, Sharded, flatten
from exporter.snapshot import PortalSnapshot, ReminderTally, SourceState, Store

log = structlog.get_logger()

FAILURE_REASONS: tuple[FailureReason, ...] = get_args(FailureReason)  # every one exported from the start


@dataclass(slots=True)
class ExporterFaults:
    """The exporter's own bugs that it survived, counted where they happen (exporter/exposition.py for
    renders, exporter/server.py for handlers)."""

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
        yield _sharded("bitrix24", _bitrix24, portals, _bitrix24_versions)
        yield _sharded("bitrix24_org", _bitrix24_org, portals, lambda s: (_portal(s).org,) * 4)
        yield _sharded("pachca", _pachca, [s for s in states if isinstance(s.data, ReminderTally)])
        yield from self._people.families(states)
        yield _sharded("bitrix24_budget", _bitrix24_budget, portals)
        yield _sharded("source_health", _source_health, states)
        yield _sharded("structure_health", _structure_health,
                       [s for s in portals if isinstance(s.data, PortalSnapshot) and s.data.structure is not None])
        info = Family.gauge("tasks_exporter_build_info", "Version of tasks-exporter, value 1.",
                            labels=["version", "python_version"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info

    def live_families(self) -> Iterator[Family]:
        """API traffic, which moves during a cycle (one can last minutes), the exporter's own faults
        (a failing snapshot render must still be counted) and its config reloads: small, rendered per scrape."""
        yield from _api_traffic(self._store)
        yield from _faults(self._faults)
        yield from _reloads(self._reloads)

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


def _portal(state: SourceState) -> PortalSnapshot:
    assert isinstance(state.data, PortalSnapshot)
    return state.data


def _bitrix24_versions(state: SourceState) -> tuple[object, ...]:
    """What _bitrix24's families of a portal are made from: the parts of the snapshot that a cycle hands over
    as the same objects when nothing in them changed (counters, users; small numbers are the same int)."""
    data = _portal(state)
    return data.counters, data.users, data.users, data.hidden_users, data.failed_commands


def _client_metric(family: Family, rows: Iterable[Row]) -> Metric:
    kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    metric = kind(family.name, family.help, labels=list(family.labels))
    for values, value in rows:
        metric.add_metric(list(values), value)
    return metric


def _bitrix24(states: list[SourceState]) -> Iterator[Family]:
    """Each portal's task counters and users, e.g.

    bitrix24_tasks{portal="acme",user_id="1",group_id="0",role="all",counter="expired"} 3.0
    bitrix24_user_info{portal="acme",user_id="1",name="Anna Petrova"} 1.0
    """
    tasks = Family(
        "bitrix24_tasks", "Bitrix24 task counter (tasks.task.counters.get) per user, workgroup and role; "
        "group_id 0 is all groups. Muted tasks are not counted.",
        labels=["portal", "user_id", "group_id", "role", "counter"], rows=_task_rows(states))
    info = Family("bitrix24_user_info", "A monitored Bitrix24 user, value 1.",
                  labels=["portal", "user_id", "name"], rows=_user_rows(states))
    users = Family.gauge("bitrix24_users", "Users monitored in the last good cycle.", labels=["portal"])
    hidden = Family.gauge(
        "bitrix24_users_hidden", "Monitored users whose counters the webhook could not see (empty answer); "
        "reading other users' counters needs an administrator's webhook.", labels=["portal"])
    failed = Family.gauge("bitrix24_commands_failed",
                          "Batch commands that failed in the last good cycle (their last values are kept).",
                          labels=["portal"])
    for state in states:
        data, portal = _portal(state), state.key.target
        users.add_metric([portal], len(data.users))
        hidden.add_metric([portal], data.hidden_users)
        failed.add_metric([portal], data.failed_commands)
    yield from (tasks, info, users, hidden, failed)


def _bitrix24_budget(states: list[SourceState]) -> Iterator[Family]:
    """Each portal's REST budget, which moves at every cycle, e.g.

    bitrix24_method_operating_seconds{portal="acme",method="tasks.task.counters.get"} 1.5
    """
    operating = Family.gauge(
        "bitrix24_method_operating_seconds", "Execution time the portal has accounted to a REST method "
        "in its 10-minute window (time.operating); calls are blocked above the portal's limit.",
        labels=["portal", "method"])
    for state in states:
        for method, seconds in sorted(_portal(state).operating_seconds.items()):
            operating.add_metric([state.key.target, method], seconds)
    yield operating


def _bitrix24_org(states: list[SourceState]) -> Iterator[Family]:
    """The company structure and workgroups, to join against bitrix24_tasks by user_id or group_id, e.g.

    bitrix24_department_info{portal="acme",department_id="5",name="Sales",parent_id="1",head_user_id="7"} 1.0
    bitrix24_user_department{portal="acme",user_id="9",department_id="1",direct="false"} 1.0
    bitrix24_group_info{portal="acme",group_id="3",name="Website relaunch",kind="project"} 1.0
    bitrix24_group_member{portal="acme",group_id="3",user_id="9",role="moderator"} 1.0
    """
    departments = Family.gauge(
        "bitrix24_department_info", "A department of the company structure, value 1; parent_id is empty for a "
        "root and head_user_id for a department without a head.",
        labels=["portal", "department_id", "name", "parent_id", "head_user_id"])
    user_departments = Family(
        "bitrix24_user_department", "A monitored user in a department, value 1: direct=\"true\" for the "
        "user's own departments, \"false\" for every department above them.",
        labels=["portal", "user_id", "department_id", "direct"], rows=_user_department_rows(states))
    groups = Family.gauge("bitrix24_group_info", "A workgroup (kind group) or project whose counters are read, "
                          "value 1.", labels=["portal", "group_id", "name", "kind"])
    members = Family("bitrix24_group_member", "A monitored user in a workgroup as owner, moderator or member, "
                     "value 1.", labels=["portal", "group_id", "user_id", "role"], rows=_member_rows(states))
    for state in states:
        org, portal = _portal(state).org, state.key.target
        for d in org.departments:
            departments.add_metric([portal, str(d.dept_id), d.name, _id(d.parent_id), _id(d.head_user_id)], 1)
        for g in org.groups:
            groups.add_metric([portal, str(g.group_id), g.name, g.kind], 1)
    yield from (departments, user_departments, groups, members)


def _id(value: int | None) -> str:
    return "" if value is None else str(value)


def _task_rows(states: list[SourceState]) -> Iterator[Row]:
    """bitrix24_tasks streams from the snapshots: the largest family is never held as rows."""
    for state in states:
        portal = state.key.target
        for q, values in _portal(state).counters.items():
            user, group = str(q.user_id), str(q.group_id)
            for counter, value in values:
                yield (portal, user, group, q.role, counter), value


# The families with a row per user or per membership stream too: held as rows, bitrix24_user_department alone
# (23,500 rows at 5,000 users) took 5.5 MB at each render, as much again as the text it becomes.

def _user_rows(states: list[SourceState]) -> Iterator[Row]:
    for state in states:
        portal = state.key.target
        for u in _portal(state).users:
            yield (portal, str(u.user_id), u.name), 1


def _user_department_rows(states: list[SourceState]) -> Iterator[Row]:
    for state in states:
        portal = state.key.target
        for ud in _portal(state).org.user_departments:
            yield (portal, str(ud.user_id), str(ud.dept_id), "true" if ud.direct else "false"), 1


def _member_rows(states: list[SourceState]) -> Iterator[Row]:
    for state in states:
        portal = state.key.target
        for m in _portal(state).org.members:
            yield (portal, str(m.group_id), str(m.user_id), m.role), 1


def _pachca(states: list[SourceState]) -> Iterator[Family]:
    """Each workspace's reminder counts, overall and per performer, and its users, e.g.

    pachca_reminders{workspace="team",status="undone",kind="call",priority="2"} 4.0
    pachca_performer_reminders_overdue{workspace="team",performer_id="7"} 1.0
    pachca_reminder_oldest_overdue_seconds{workspace="team"} 3600.5
    pachca_user_info{workspace="team",user_id="7",name="Anna Petrova",department="Sales"} 1.0
    pachca_user_tag{workspace="team",user_id="7",tag="Backend"} 1.0
    """
    reminders = Family.gauge("pachca_reminders", "Pachca reminders by status, kind and priority.",
                             labels=["workspace", "status", "kind", "priority"])
    overdue = Family.gauge("pachca_reminders_overdue",
                           "Open (undone) reminders whose due_at is in the past.",
                           labels=["workspace", "kind", "priority"])
    due_soon = Family.gauge("pachca_reminders_due_soon",
                            "Open reminders due within the configured due_soon window.",
                            labels=["workspace", "kind"])
    no_due = Family.gauge("pachca_reminders_without_due_date", "Reminders with no due_at.",
                          labels=["workspace", "status"])
    performer = Family.gauge("pachca_performer_reminders",
                             "Reminders per performer (a reminder counts once for each performer).",
                             labels=["workspace", "performer_id", "status"])
    performer_overdue = Family.gauge("pachca_performer_reminders_overdue",
                                     "Overdue open reminders per performer.",
                                     labels=["workspace", "performer_id"])
    oldest = Family.gauge("pachca_reminder_oldest_overdue_seconds",
                          "How long the most overdue open reminder is past its due time (0 if none).",
                          labels=["workspace"])
    info = Family.gauge(
        "pachca_user_info", "A Pachca user, value 1: every active user GET /users lists, plus bots and "
        "deactivated users who perform reminders. name is empty with names: false; department is free text.",
        labels=["workspace", "user_id", "name", "department"])
    tags = Family.gauge("pachca_user_tag", "An employee tag (list_tags) of a user in pachca_user_info, value 1.",
                        labels=["workspace", "user_id", "tag"])
    users_read = Family.gauge(
        "pachca_users_last_read_timestamp_seconds", "Unix time GET /users was last read to the end; "
        "names, departments and tags are that old. Absent until the first good read.", labels=["workspace"])
    malformed = Family.gauge(
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
        for user in t.listed_users:
            uid = str(user.user_id)
            info.add_metric([ws, uid, user.name, user.department], 1)
            for tag in user.tags:
                tags.add_metric([ws, uid, tag], 1)
        if t.users_read_at is not None:
            users_read.add_metric([ws], t.users_read_at)
    yield from (reminders, overdue, due_soon, no_due, performer, performer_overdue, oldest, info, tags, users_read,
                malformed)


class PeopleFamilies:
    """One person across both tools, joined at render time for each `people` pair, e.g.

    tasks_exporter_person_info{person="a@x.io",portal="acme",bitrix24_user_id="1",workspace="team",pachca_user_id="7"} 1
    tasks_exporter_people{portal="acme",workspace="team",state="matched"} 40.0

    Without a `people` section both families are there with no rows. Each e-mail that several users share is
    logged once (by user ids, never the e-mail), however often it renders.
    """

    def __init__(self, people: PeopleConfig | None) -> None:
        self._people = people
        self._reported: set[tuple[str, str, str]] = set()  # (side, portal or workspace, e-mail)
        self._lock = threading.Lock()

    def families(self, states: list[SourceState]) -> Iterator[Family]:
        person = Family.gauge(
            "tasks_exporter_person_info", "One person in both tools, value 1: a Bitrix24 user and a Pachca user "
            "with the same e-mail. person is the e-mail, or the Bitrix24 name with people.label: name.",
            labels=["person", "portal", "bitrix24_user_id", "workspace", "pachca_user_id"])
        people = Family.gauge(
            "tasks_exporter_people", "Users of a portal and a workspace by match state: matched (pairs), "
            "bitrix24_only, pachca_only, ambiguous (users of both sides whose e-mail is shared on one side).",
            labels=["portal", "workspace", "state"])
        portals = {s.key.target: s.data for s in states if isinstance(s.data, PortalSnapshot)}
        workspaces = {s.key.target: s.data for s in states if isinstance(s.data, ReminderTally)}
        if self._people is None:
            pairs: list[tuple[str, str]] = []
        elif self._people.pairs is None:  # no `pairs`: every portal with every workspace
            pairs = [(p, w) for p in portals for w in workspaces]
        else:
            pairs = [(pair.portal, pair.workspace) for pair in self._people.pairs]
        label = self._people.label if self._people else "email"
        for portal_name, workspace_name in pairs:
            portal, workspace = portals.get(portal_name), workspaces.get(workspace_name)
            if portal is None or workspace is None or workspace.users_read_at is None:
                continue  # a side not read yet: no series rather than a misleading count
            joined = match_by_email(portal.users, workspace.users, label=label)
            self._report(portal_name, workspace_name, joined)
            for m in joined.matches:
                person.add_metric([m.person, portal_name, str(m.bitrix24_user_id), workspace_name,
                                   str(m.pachca_user_id)], 1)
            for state, n in joined.states.items():
                people.add_metric([portal_name, workspace_name, state], n)
        yield from (person, people)

    def _report(self, portal: str, workspace: str, joined: PeopleMatch) -> None:
        for shared in joined.shared:
            target = portal if shared.side == "bitrix24" else workspace
            with self._lock:
                if (shared.side, target, shared.email) in self._reported:
                    continue
                self._reported.add((shared.side, target, shared.email))
            log.warning("people_email_shared", side=shared.side, target=target, user_ids=list(shared.user_ids),
                        hint="an e-mail several users carry matches nobody; they count as ambiguous")


def _source_health(states: list[SourceState]) -> Iterator[Family]:
    """How each source's cycles go, e.g.

    tasks_exporter_source_up{source="bitrix24",target="acme"} 1.0
    tasks_exporter_source_failures_total{source="bitrix24",target="acme",reason="rate_limited"} 0.0
    """
    labels = ["source", "target"]
    up = Family.gauge("tasks_exporter_source_up",
                      "1 when the source's last collection cycle succeeded.", labels=labels)
    last = Family.gauge("tasks_exporter_source_last_success_timestamp_seconds",
                        "Unix time of the source's last successful cycle.", labels=labels)
    duration = Family.gauge("tasks_exporter_source_collection_duration_seconds",
                            "Wall time of the source's last collection cycle.", labels=labels)
    interval = Family.gauge("tasks_exporter_source_interval_seconds",
                            "Configured collection interval.", labels=labels)
    bound = Family.gauge(
        "tasks_exporter_source_cycle_bound_seconds", "Least time the API's rate limit allows for one cycle "
        "of this size; above the interval, cycles run back to back and data is older than the interval.",
        labels=labels)
    failures = Family.counter("tasks_exporter_source_failures",
                              "Failed collection cycles by reason.", labels=[*labels, "reason"])
    for s in states:
        key = [s.key.source, s.key.target]
        _add_health(key, s, up, last, failures)
        if s.last_duration is not None:
            duration.add_metric(key, s.last_duration)
        interval.add_metric(key, s.interval)
        bound.add_metric(key, s.cycle_bound)
    yield from (up, last, duration, interval, bound, failures)


def _structure_health(states: list[SourceState]) -> Iterator[Family]:
    """Structure refreshes (departments, workgroups, members) run on their own interval; a failed one keeps
    the last good structure, so it is reported here rather than in tasks_exporter_source_up, e.g.

    tasks_exporter_structure_up{source="bitrix24",target="acme"} 1.0
    tasks_exporter_structure_failures_total{source="bitrix24",target="acme",reason="server_error"} 0.0
    """
    labels = ["source", "target"]
    up = Family.gauge("tasks_exporter_structure_up",
                      "1 when the source's last structure refresh succeeded.", labels=labels)
    last = Family.gauge("tasks_exporter_structure_last_success_timestamp_seconds",
                        "Unix time of the source's last successful structure refresh.", labels=labels)
    failures = Family.counter("tasks_exporter_structure_failures",
                              "Failed structure refreshes by reason (the last good structure is kept).",
                              labels=[*labels, "reason"])
    for state in states:
        structure = _portal(state).structure
        assert structure is not None
        _add_health([state.key.source, state.key.target], structure, up, last, failures)
    yield from (up, last, failures)


class _Health(Protocol):
    """What a source's cycles (SourceState) and its structure refreshes (StructureStatus) both report."""

    @property
    def up(self) -> bool: ...
    @property
    def last_success(self) -> float | None: ...
    @property
    def failures(self) -> Mapping[Any, int]: ...


def _add_health(key: list[str], health: _Health, up: Family, last: Family, failures: Family) -> None:
    """Whether it is up, when it last succeeded (once it has), and its failures by reason: every reason is
    exported from the start, so increase() sees the first failure too."""
    up.add_metric(key, 1 if health.up else 0)
    if health.last_success is not None:
        last.add_metric(key, health.last_success)
    for reason, n in sorted({**dict.fromkeys(FAILURE_REASONS, 0), **health.failures}.items()):
        failures.add_metric([*key, reason], n)


def _api_traffic(store: Store) -> Iterator[Family]:
    """Each source's HTTP traffic so far, e.g.

    tasks_exporter_api_requests_total{source="bitrix24",target="acme",method="batch",outcome="success"} 12.0
    tasks_exporter_api_errors_total{source="bitrix24",target="acme",code="QUERY_LIMIT_EXCEEDED"} 1.0
    """
    labels = ["source", "target"]
    requests = Family.counter("tasks_exporter_api_requests", "HTTP requests to the APIs by outcome.",
                              labels=[*labels, "method", "outcome"])
    errors = Family.counter("tasks_exporter_api_errors",
                            "Errors the APIs answered, by API error code (including batch commands).",
                            labels=[*labels, "code"])
    waited = Family.counter("tasks_exporter_rate_limit_wait_seconds",
                            "Time spent waiting for the client-side rate limit or a method pause.",
                            labels=labels)
    for key, telemetry in sorted(store.telemetry().items(), key=lambda kv: (kv[0].source, kv[0].target)):
        counts = telemetry.counts()
        base = [key.source, key.target]
        for (method, outcome), n in sorted(counts.requests.items()):
            requests.add_metric([*base, method, outcome], n)
        for code, n in sorted(counts.errors.items()):
            errors.add_metric([*base, code], n)
        waited.add_metric(base, counts.rate_limit_wait_seconds)
    yield from (requests, errors, waited)


def _faults(faults: ExporterFaults) -> Iterator[Family]:
    """Bugs the exporter survived, e.g.

    tasks_exporter_render_failures_total 0.0
    """
    renders = Family.counter("tasks_exporter_render_failures",
                             "Renders of /metrics that raised (a bug, logged as render_failed); the last good "
                             "exposition is served meanwhile.", labels=[])
    renders.add_metric([], faults.render_failures)
    handlers = Family.counter("tasks_exporter_http_handler_failures",
                              "HTTP requests answered 500 because a handler raised (a bug, logged as "
                              "request_failed).", labels=[])
    handlers.add_metric([], faults.handler_failures)
    yield from (renders, handlers)


def _reloads(reloads: ConfigReloads) -> Iterator[Family]:
    """Named as Prometheus names its own, e.g. `tasks_exporter_config_last_reload_successful 1.0`."""
    successful = Family.gauge("tasks_exporter_config_last_reload_successful",
                             "1 when the latest config reload (SIGHUP or POST /-/reload) succeeded; start-up "
                             "counts as one.", labels=[])
    successful.add_metric([], 1 if reloads.successful else 0)
    at = Family.gauge("tasks_exporter_config_last_reload_success_timestamp_seconds",
                     "Unix time of the latest successful config load (start-up or reload).", labels=[])
    at.add_metric([], reloads.success_timestamp)
    yield from (successful, at)
