"""The exporter's own health: each source's cycles and structure refreshes, API traffic, survived bugs, reloads."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, get_args

from exporter.collector.bitrix24 import portal_of
from exporter.errors import FailureReason
from exporter.render import Family
from exporter.snapshot import SourceState, Store

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


def source_health(states: list[SourceState]) -> Iterator[Family]:
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


def structure_health(states: list[SourceState]) -> Iterator[Family]:
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
        structure = portal_of(state).structure
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


def api_traffic(store: Store) -> Iterator[Family]:
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


def exporter_faults(faults: ExporterFaults) -> Iterator[Family]:
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


def config_reloads(reloads: ConfigReloads) -> Iterator[Family]:
    """Named as Prometheus names its own, e.g. `tasks_exporter_config_last_reload_successful 1.0`."""
    successful = Family.gauge("tasks_exporter_config_last_reload_successful",
                             "1 when the latest config reload (SIGHUP or POST /-/reload) succeeded; start-up "
                             "counts as one.", labels=[])
    successful.add_metric([], 1 if reloads.successful else 0)
    at = Family.gauge("tasks_exporter_config_last_reload_success_timestamp_seconds",
                     "Unix time of the latest successful config load (start-up or reload).", labels=[])
    at.add_metric([], reloads.success_timestamp)
    yield from (successful, at)
