"""One logging pipeline: structlog events and stdlib records (aiohttp, asyncio) alike, masked, in context."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import signal

import pytest
import structlog

from exporter import log
from exporter.app import running
from exporter.config import Config
from exporter.exposition import Exposition
from exporter.render import Family
from exporter.scheduler import SourceLoop
from exporter.simulator import bitrix24 as b24sim
from exporter.simulator import serve
from exporter.snapshot import Store
from tests.conftest import LogLines, both_sources_served, eventually, exporter_process, rendered_log, scrape_until


async def test_json_run_prints_only_json_lines_including_aiohttp_asyncio_and_api_requests():
    async with exporter_process("--demo", "--log.format", "json", "--log.level", "debug") as exporter:
        await scrape_until(exporter.url, both_sources_served, timeout=20, interval=0.1, starting=True)
        reader, writer = await asyncio.open_connection("127.0.0.1", exporter.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.read(100), 5)).split(b" ")[1].startswith(b"4")
        writer.close()
        exporter.proc.send_signal(signal.SIGTERM)
        code = await exporter.exited(15)
    assert code == 0
    lines = "".join(exporter.output.stdout).splitlines() + "".join(exporter.output.stderr).splitlines()
    events = [json.loads(line) for line in lines]  # every line parses, or this raises
    loggers = {e.get("logger") for e in events}
    assert "asyncio" in loggers, loggers
    (bad,) = [e for e in events if e["event"] == "http_bad_request"]
    assert (bad["level"], bad["logger"]) == ("warning", "aiohttp.server")
    assert "exception" not in bad
    assert "Got more than" in bad["detail"]
    requests = {(e["source"], e["target"]) for e in events if e["event"] == "api_request"}
    assert requests == {("bitrix24", "demo-portal"), ("pachca", "demo-workspace")}
    assert {e["level"] for e in events} <= {"debug", "info", "warning"}


def test_unretrieved_task_exception_is_an_error_event_with_traceback(json_log: LogLines):
    async def lost() -> None:
        raise RuntimeError("nobody awaited me")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(log.log_loop_exception)
        task = asyncio.create_task(lost())
        await asyncio.wait([task])
        del task
        gc.collect()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    (event,) = [e for e in json_log() if e["event"] == "asyncio_error"]
    assert event["level"] == "error"
    assert event["detail"] == "Task exception was never retrieved"
    assert event["exception"].startswith("Traceback")
    assert "RuntimeError: nobody awaited me" in event["exception"]
    assert "lost()" in event["future"]  # the task, as asyncio names it


def test_stdlib_records_keep_level_traceback_and_masking(json_log: LogLines):
    log.register_secrets(["s3cr3t-token-value"])
    library = logging.getLogger("some.library")
    try:
        raise ConnectionError("refused by https://x.bitrix24.ru/rest/1/webhookpart/ with s3cr3t-token-value")
    except ConnectionError:
        library.error("call to %s failed", "https://x.bitrix24.ru/rest/1/webhookpart/", exc_info=True)
    library.debug("detail %d", 42)
    error, debug = json_log()
    assert (error["level"], error["logger"]) == ("error", "some.library")
    assert error["event"] == "call to https://x.bitrix24.ru/rest/1/***/ failed"
    assert error["exception"].startswith("Traceback")
    assert "ConnectionError: refused by" in error["exception"]
    assert "webhookpart" not in json.dumps(error)
    assert "s3cr3t-token-value" not in json.dumps(error)
    assert (debug["level"], debug["event"]) == ("debug", "detail 42")


def test_level_applies_to_stdlib_records():
    events = rendered_log("info")
    logging.getLogger("some.library").debug("hidden")
    logging.getLogger("some.library").info("shown")
    assert [e["event"] for e in events()] == ["shown"]


def test_console_format_renders_stdlib_records_with_their_logger():
    buffer = io.StringIO()
    log.configure("info", "console", stream=buffer)
    logging.getLogger("some.library").warning("careful")
    (line,) = buffer.getvalue().splitlines()
    assert "[warning  ] careful" in line
    assert line.endswith("[some.library]")


async def test_every_event_of_a_cycle_names_its_source_and_target(portal_factory, json_log: LogLines):
    server = await portal_factory(users=3)
    server.sim.fault = "http_500"
    source = server.source(name="acme")
    store = Store()
    store.register(source)
    loop = SourceLoop(source, store)
    assert await loop.run_once() is False
    logged = json_log()
    assert any(e["event"] == "api_request" for e in logged)  # the client's requests, at debug level
    assert all((e.get("source"), e.get("target")) == ("bitrix24", "acme") for e in logged), logged
    (failed,) = [e for e in logged if e["event"] == "cycle_failed"]
    assert failed["reason"] == "server_error"


async def test_malformed_requests_are_one_line_without_traceback(json_log: LogLines):
    async with running(Config()) as exp:
        host, port = exp.url.removeprefix("http://").split(":")
        for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(raw)
            await writer.drain()
            assert (await asyncio.wait_for(reader.read(100), 5)).split(b" ")[1].startswith(b"4")
            writer.close()
    bad = [e for e in json_log() if e.get("logger") == "aiohttp.server"]
    assert [(e["event"], e["level"]) for e in bad] == [
        ("http_bad_request", "debug"),  # not HTTP at all: aiohttp keeps port noise at debug
        ("http_bad_request", "warning"),
    ]
    assert not any("exception" in e for e in bad)
    assert "Got more than 8190 bytes" in bad[1]["detail"]


@pytest.mark.parametrize("level", ["debug", "info"])
async def test_a_client_that_hangs_up_mid_request_is_one_debug_line(level):
    events = rendered_log(level)
    portal = b24sim.generate_portal(2)
    async with serve(b24sim.create_app(portal)) as url:
        _, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
        writer.write(f"POST {portal.webhook_path}batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 1000\r\n\r\n{".encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: portal.in_flight == 0 and portal.received == 1)
    server = [e for e in events() if e.get("logger") == "aiohttp.server"]
    if level == "debug":
        (gone,) = server
        assert (gone["event"], gone["level"]) == ("http_client_gone", "debug")
        assert "exception" not in gone
        assert gone["detail"] == "Connection lost"
    else:
        assert server == []


async def test_a_render_started_by_a_cycle_does_not_log_as_that_cycle(json_log) -> None:
    """What a render logs (it covers every source) carries no `source`/`target` of the cycle whose change
    set it off."""
    def snapshot() -> list[Family]:
        structlog.get_logger().info("rendering_probe")
        return []

    exposition = Exposition(snapshot)
    with structlog.contextvars.bound_contextvars(source="bitrix24", target="acme"):
        exposition.invalidate()
    await eventually(lambda: [e for e in json_log() if e["event"] == "rendering_probe"])
    (probe,) = [e for e in json_log() if e["event"] == "rendering_probe"]
    assert "source" not in probe
    assert "target" not in probe
