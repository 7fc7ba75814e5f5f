"""The running exporter over HTTP: /metrics from the snapshot, keep-last-good, stale series, endpoints."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from exporter.app import Exporter, running
from exporter.config import Config
from exporter.scheduler import SourceLoop
from exporter.snapshot import PortalSnapshot, Store
from tests.conftest import Events, check_metrics, down_with, eventually, labels, named, samples, scrape_until, value

ACME = {"source": "bitrix24", "target": "acme"}


def has_tasks(text: str) -> bool:
    return "bitrix24_tasks{" in text


async def test_metrics_serve_counters_user_info_and_health(portal_factory):
    server = await portal_factory(users=3)
    config = Config(bitrix24=(server.config(name="acme"),))
    async with running(config) as exp:
        await eventually(lambda: exp.store.ready())
        text = await scrape_until(exp.url, has_tasks)
    tasks = samples(text, "bitrix24_tasks")
    expected = server.sim.counters(1, 0, "view_all")["expired"]
    assert tasks[labels(counter="expired", group_id="0", portal="acme", role="all", user_id="1")] == expected
    assert len(tasks) == 3 * 5 * 2
    user = server.sim.users[0]
    assert samples(text, "bitrix24_user_info", user_id="1") == {
        labels(name=f"{user.name} {user.last_name}", portal="acme", user_id="1"): 1}
    assert samples(text, "tasks_exporter_source_up") == {labels(**ACME): 1.0}
    assert samples(text, "tasks_exporter_source_last_success_timestamp_seconds")
    assert (value(text, "tasks_exporter_api_requests_total", method="batch", outcome="success", **ACME) or 0) >= 1
    assert samples(text, "tasks_exporter_build_info")


async def test_failed_cycle_keeps_last_good_data_and_reports_down(portal_factory):
    server = await portal_factory(users=2)
    config = Config(bitrix24=(server.config(name="acme", interval=0.2),))
    source = server.source(name="acme", interval=0.2)  # fast retries: the test waits for a failed cycle
    async with running(config, max_backoff=0.4, sources=[source]) as exp:
        good = await scrape_until(exp.url, has_tasks)
        server.sim.fault = "http_500"
        failing = await scrape_until(exp.url, lambda t: down_with(t, "server_error", **ACME))
        assert samples(failing, "bitrix24_tasks") == samples(good, "bitrix24_tasks")
        server.sim.fault = None
        await scrape_until(exp.url, lambda t: value(t, "tasks_exporter_source_up", **ACME) == 1)


async def test_removed_users_series_disappear_from_metrics(portal_factory):
    server = await portal_factory(users=3)
    config = Config(bitrix24=(server.config(name="acme", interval=0.2),))
    async with running(config) as exp:
        await scrape_until(exp.url, lambda t: ',user_id="3"' in t)
        server.sim.users[2].active = False  # the department they head still names them: head_user_id="3"
        text = await scrape_until(exp.url, lambda t: ',user_id="3"' not in t)
    assert samples(text, "bitrix24_tasks")
    assert ',user_id="3"' not in text


@pytest.fixture
async def serving(portal_factory) -> AsyncIterator[Exporter]:
    """An exporter over a two-user portal, its first cycle done."""
    server = await portal_factory(users=2)
    async with running(Config(bitrix24=(server.config(),))) as exp:
        await eventually(lambda: exp.store.ready())
        yield exp


async def metrics_in(exp: Exporter, coding: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{exp.url}/metrics", headers={"Accept-Encoding": coding})


async def test_gzip_is_served_when_asked(serving: Exporter):
    raw, plain = await metrics_in(serving, "gzip"), await metrics_in(serving, "identity")
    assert raw.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert "bitrix24_tasks" in raw.text  # httpx decoded the (multi-member) gzip stream
    assert raw.num_bytes_downloaded < len(plain.content) / 2


async def test_endpoints_landing_health_ready_and_unknown(portal_factory):
    server = await portal_factory(users=2)
    server.sim.latency = 0.3
    async with running(Config(bitrix24=(server.config(),))) as exp, httpx.AsyncClient() as client:
        assert (await client.get(f"{exp.url}/healthz")).status_code == 200
        assert (await client.get(f"{exp.url}/ready")).status_code == 503  # first cycle still running
        await eventually(lambda: exp.store.ready())
        assert (await client.get(f"{exp.url}/ready")).status_code == 200
        landing = await client.get(f"{exp.url}/")
        assert 'href="metrics"' in landing.text
        assert server.sim.secret not in landing.text
        assert "/rest/1/***" in landing.text
        assert (await client.get(f"{exp.url}/nope")).status_code == 404
        assert (await client.post(f"{exp.url}/metrics", content=b"x")).status_code == 405
        assert (await client.head(f"{exp.url}/metrics")).status_code == 200


async def test_metrics_pass_promtool_check_metrics(portal_factory):
    server = await portal_factory(users=5, hidden=1, legacy=True)
    async with running(Config(bitrix24=(server.config(name="acme"),))) as exp:
        text = await scrape_until(exp.url, has_tasks)
    await check_metrics(text)


async def test_malformed_and_oversized_requests_get_4xx_and_serving_goes_on():
    import asyncio

    async with running(Config()) as exp, httpx.AsyncClient() as client:
        host, port = exp.url.removeprefix("http://").split(":")
        answers = []
        for raw in (b"GARBAGE\r\n\r\n", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n",
                    b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\nabc"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(raw)
            await writer.drain()
            answers.append((await asyncio.wait_for(reader.read(200), 5)).split(b"\r\n")[0])
            writer.close()
        assert all(a.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")) for a in answers), answers
        response = await client.get(f"{exp.url}/metrics")
        assert response.status_code == 200
        assert "tasks_exporter_build_info" in response.text
        assert (await client.request("DELETE", f"{exp.url}/")).status_code == 405
        assert (await client.get(f"{exp.url}/metrics/../../etc/passwd")).status_code == 404


async def test_gzip_answer_is_one_stream_with_the_live_part(serving: Exporter):
    raw = await metrics_in(serving, "gzip")
    body = b"".join(serving.exposition.parts(compressed=True))
    plain = zlib.decompress(body, 31).decode()  # one gzip stream: a strict single-member reader sees all
    assert "bitrix24_tasks{" in plain
    assert "process_resident_memory_bytes" in plain
    assert "tasks_exporter_api_requests_total{" in plain
    assert raw.text.count("# TYPE") == plain.count("# TYPE")


async def test_cycle_done_logs_the_sources_own_summary_and_its_requests(portal_factory, logs: Events):
    server = await portal_factory(users=3, hidden=1)
    source = server.source(name="acme")
    store = Store()
    store.register(source)
    assert await SourceLoop(source, store).run_once()
    (done,) = named(logs, "cycle_done")
    data = store.states()[0].data
    assert isinstance(data, PortalSnapshot)
    assert (done["users"], done["hidden_users"], done["failed_commands"]) == (3, 1, 0)
    assert done["series"] == len(list(data.readings)) > 0
    assert done["requests"] == server.sim.received
