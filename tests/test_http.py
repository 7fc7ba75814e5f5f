"""/metrics as served: failures inside the exporter are survived, logged and counted; the Content-Type names
the format the body is in, whatever prometheus_client release is installed; Accept-Encoding weights count."""

from __future__ import annotations

import platform
from typing import Any

import httpx
import prometheus_client
import prometheus_client.exposition
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter import __version__
from exporter.app import running
from exporter.config import Config
from exporter.server import accepts_gzip, coding_weights
from exporter.snapshot import CounterQuery, PortalSnapshot, PortalUser, SourceKey, Store
from tests.conftest import LogLines, check_metrics, register, scrape_until, value

TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"
ACME = SourceKey("bitrix24", "acme")


def snapshot(expired: Any) -> PortalSnapshot:
    return PortalSnapshot(users=(PortalUser(1, "Anna"),), counters={CounterQuery(1, 0, "all"): (("expired", expired),)},
                          hidden_users=0, failed_commands=0)


def expired(text: str) -> float | None:
    return value(text, "bitrix24_tasks", portal="acme", user_id="1", group_id="0", role="all", counter="expired")


def render_failures(text: str) -> float | None:
    return value(text, "tasks_exporter_render_failures_total")


def problems(events: LogLines) -> list[dict[str, Any]]:
    """The warnings and errors logged so far."""
    return [e for e in events() if e["level"] in ("warning", "error", "critical")]


async def test_render_failure_keeps_the_last_good_metrics_is_logged_once_and_counted(json_log: LogLines):
    store = Store()
    register(store, ACME)
    async with running(Config(), sources=[], store=store) as exp:
        store.succeeded(ACME, snapshot(3.0), 0.1)
        await scrape_until(exp.url, lambda t: expired(t) == 3.0)
        store.succeeded(ACME, snapshot("n/a"), 0.1)  # a value the renderer cannot write: a bug upstream
        await scrape_until(exp.url, lambda t: render_failures(t) == 1)
        store.succeeded(ACME, snapshot("n/a"), 0.1)  # the same bug at the next cycle
        text = await scrape_until(exp.url, lambda t: render_failures(t) == 2)
        assert expired(text) == 3.0  # the last good exposition
        store.succeeded(ACME, snapshot(5.0), 0.1)
        text = await scrape_until(exp.url, lambda t: expired(t) == 5.0)
        assert render_failures(text) == 2
    (failed,) = problems(json_log)
    assert (failed["level"], failed["event"], failed["part"]) == ("error", "render_failed", "snapshot")
    assert failed["exception"].startswith("Traceback")
    assert "TypeError" in failed["exception"]
    assert failed["error"].startswith("TypeError: ")


class ReadinessBug(Store):
    """A store whose readiness check raises: stands for any bug in a handler."""

    def ready(self) -> bool:
        raise RuntimeError("readiness bug")


async def test_handler_failure_is_one_error_event_a_500_and_metrics_go_on(json_log: LogLines):
    async with running(Config(), sources=[], store=ReadinessBug()) as exp, httpx.AsyncClient() as client:
        response = await client.get(f"{exp.url}/ready")
        assert response.status_code == 500
        assert "request_failed" in response.text
        text = await scrape_until(
            exp.url, lambda t: value(t, "tasks_exporter_http_handler_failures_total") == 1)
        assert render_failures(text) == 0
        assert (await client.get(f"{exp.url}/healthz")).status_code == 200
    (failed,) = problems(json_log)
    assert (failed["level"], failed["event"], failed["method"], failed["path"]) == (
        "error", "request_failed", "GET", "/ready")
    assert failed["exception"].startswith("Traceback")
    assert "RuntimeError: readiness bug" in failed["exception"]


def another_format(*_args: Any, **_kwargs: Any) -> bytes:
    """What a prometheus_client release with other defaults could write (UTF-8 names, OpenMetrics' EOF)."""
    return b'# TYPE "process.cpu" counter\n{"process.cpu"} 1.0\n# EOF\n'


@pytest.mark.parametrize("latest", [
    "text/plain; version=0.0.4; charset=utf-8",  # prometheus_client before 0.22
    "text/plain; version=1.0.0; charset=utf-8",  # 0.22 and later
    "application/openmetrics-text; version=1.0.0; charset=utf-8",  # a release to come, perhaps
])
async def test_content_type_names_the_format_written_whatever_prometheus_client_says(monkeypatch, latest):
    for module in (prometheus_client, prometheus_client.exposition):
        monkeypatch.setattr(module, "CONTENT_TYPE_LATEST", latest)
        monkeypatch.setattr(module, "generate_latest", another_format)
    async with running(Config()) as exp, httpx.AsyncClient() as client:
        response = await client.get(f"{exp.url}/metrics")
    assert response.headers["content-type"] == TEXT_0_0_4
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"process_resident_memory_bytes", "python_info", "tasks_exporter_build_info"} <= names
    assert "# EOF" not in response.text
    assert "process.cpu" not in response.text
    await check_metrics(response.text)


async def test_process_metrics_are_those_prometheus_client_would_write():
    registry = CollectorRegistry(auto_describe=False)
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)

    def shape(text: str) -> set[tuple[str, str, frozenset[tuple[str, tuple[str, ...]]]]]:
        return {(f.name, f.type, frozenset((s.name, tuple(sorted(s.labels))) for s in f.samples))
                for f in text_string_to_metric_families(text) if f.name.startswith(("process_", "python_"))}

    async with running(Config()) as exp, httpx.AsyncClient() as client:
        served = (await client.get(f"{exp.url}/metrics")).text
    reference = shape(generate_latest(registry).decode())
    assert len(reference) >= 5
    assert shape(served) == reference


@pytest.mark.parametrize(("header", "gzip"), [
    (None, False),
    ("", False),
    ("gzip", True),
    ("gzip;q=0", False),
    ("gzip; q=0.000", False),
    ("*", True),
    ("*;q=0", False),
    ("gzip;q=0.5", True),
    ("GZIP;Q=0.001", True),
    ("x-gzip", True),
    ("identity", False),
    ("deflate, br", False),
    ("*, gzip;q=0", False),  # the explicit coding wins over the wildcard
    ("gzip;q=0, *", False),
    ("gzip;q=0.5, identity", False),  # identity is preferred
    ("gzip, identity;q=0.5", True),
    ("br;q=1.0, gzip;q=0.8, *;q=0.1", True),
    (" , gzip ,", True),  # empty list elements are allowed
    ("gzip;q=1.5", False),  # not a qvalue: the member is dropped
    ("gzip;q=abc", False),
    ("gzip;q=0.1234", False),
])
def test_accept_encoding_weights_decide_gzip(header, gzip):
    assert accepts_gzip(header) is gzip


def test_coding_weights_reads_each_member():
    assert coding_weights("gzip;q=0.5, Identity ; q=0, *;q=1.000, br") == {
        "gzip": 0.5, "identity": 0.0, "*": 1.0, "br": 1.0}


@pytest.mark.parametrize(("header", "gzip"), [("gzip;q=0", False), ("gzip;q=0.5", True), ("*", True),
                                              ("identity", False)])
async def test_metrics_are_gzipped_only_when_accepted(header, gzip):
    async with running(Config()) as exp, httpx.AsyncClient() as client:
        response = await client.get(f"{exp.url}/metrics", headers={"Accept-Encoding": header})
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == ("gzip" if gzip else None)
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.headers["content-type"] == TEXT_0_0_4
    assert value(response.text, "tasks_exporter_build_info", version=__version__,
                 python_version=platform.python_version()) == 1
    assert (response.num_bytes_downloaded < len(response.content)) is gzip  # what came over the wire
