"""Live reconfiguration: SIGHUP and POST /-/reload change only what changed, refuse a bad config whole, and
never send a Bitrix24 portal more than its limit. The CLI runs as a subprocess against the simulators."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import log
from exporter.app import running
from exporter.config import Secret, load_config
from exporter.errors import ConfigError
from exporter.reload import ReloadPlan, settings_of
from exporter.simulator import bitrix24 as b24sim
from exporter.simulator import pachca as pachcasim
from exporter.simulator import serve
from exporter.snapshot import SourceKey
from tests.conftest import ExporterRun, der_of, eventually, exporter_process, make_certificate, served_certificate

TRIGGERS = ["SIGHUP", "POST /-/reload"]
SUCCESSFUL = "tasks_exporter_config_last_reload_successful"
SUCCESS_AT = "tasks_exporter_config_last_reload_success_timestamp_seconds"


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name{labels}` of an exposition, None when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def portal_entry(url: str, sim: b24sim.PortalSimulator, name: str, *, interval: str = "1s", groups: str = "[0]",
                 **extra: str) -> str:
    """One `bitrix24` list entry for a simulated portal."""
    lines = [f"- name: {name}", f"  webhook_url: {url}{sim.webhook_path}", f"  interval: {interval}",
             f"  groups: {groups}"]
    return "\n".join(lines + [f"  {k}: {v}" for k, v in extra.items()]) + "\n"


async def reload_status(exporter: CliExporter) -> tuple[float | None, float | None]:
    """(tasks_exporter_config_last_reload_successful, ..._success_timestamp_seconds) as served now."""
    text = await exporter.metrics()
    return value(text, SUCCESSFUL), value(text, SUCCESS_AT)


def started_at(event: dict[str, Any]) -> float:
    """When the cycle of a cycle_done event began (Unix seconds)."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp() - event["duration_s"]


class CliExporter:
    """`python -m exporter --config FILE` in a subprocess (exporter_process); its JSON log events are collected
    as they come."""

    def __init__(self, config: Path, web_config: Path | None = None, *, tls: bool = False,
                 auth: tuple[str, str] | None = None) -> None:
        self.config = config
        self.web_config = web_config
        self.port = 0  # the one the exporter binds, once started
        self.scheme = "https" if tls else "http"
        self.auth = auth
        self._events: list[dict[str, Any]] = []
        self._stack = contextlib.AsyncExitStack()
        self._run: ExporterRun | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def proc(self) -> asyncio.subprocess.Process:
        assert self._run is not None, "not started"
        return self._run.proc

    async def start(self) -> None:
        args = ["--config", str(self.config), "--log.format", "json"]
        if self.web_config:
            args += ["--web.config.file", str(self.web_config)]
        self._run = await self._stack.enter_async_context(exporter_process(*args, within=20))
        self.port = self._run.port

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every log event so far (one JSON line of stderr each), parsed once."""
        lines = self._run.output.stderr if self._run is not None else []
        self._events.extend(json.loads(line) for line in lines[len(self._events):])
        return self._events

    def named(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=False, auth=self.auth, timeout=10)  # the certificates are made per test

    async def metrics(self) -> str:
        async with self.client() as client:
            response = await client.get(f"{self.url}/metrics")
        response.raise_for_status()
        return response.text

    def send_signal(self, number: int) -> None:
        self.proc.send_signal(number)

    async def exited(self) -> int:
        return await asyncio.wait_for(self.proc.wait(), 20)

    async def reload(self, trigger: str) -> httpx.Response | None:
        """Ask for a reload; POST answers when it is done, a signal's outcome is in the log."""
        if trigger == "SIGHUP":
            self.proc.send_signal(signal.SIGHUP)
            return None
        async with self.client() as client:
            return await client.post(f"{self.url}/-/reload")

    async def reloaded(self, trigger: str, event: str = "config_reloaded") -> dict[str, Any]:
        """The log event of the reload that `trigger` asks for, once it has happened."""
        before = len(self.named(event))
        response = await self.reload(trigger)
        if response is not None:
            assert response.status_code == (200 if event == "config_reloaded" else 400), response.text
        found: list[dict[str, Any]] = await eventually(lambda: self.named(event)[before:], timeout=20)
        return found[0]

    async def stop(self) -> int:
        assert self._run is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await self._run.exited(20)
        finally:
            await self._stack.aclose()


@pytest.fixture
async def cli() -> AsyncIterator[Callable[..., Awaitable[CliExporter]]]:
    started: list[CliExporter] = []

    async def start(config: Path, web_config: Path | None = None, **kwargs: Any) -> CliExporter:
        exporter = CliExporter(config, web_config, **kwargs)
        await exporter.start()  # one that fails to start has stopped already
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        assert await exporter.stop() == 0
        assert not [e for e in exporter.events if e.get("level") == "error"
                    and e["event"] not in ("config_reload_failed", "web_config_reload_failed")], exporter.events


@pytest.fixture
async def portals() -> AsyncIterator[Callable[..., Awaitable[tuple[str, b24sim.PortalSimulator]]]]:
    """Fake portals: `url, sim = await portals(users=3)`."""
    async with contextlib.AsyncExitStack() as stack:
        async def start(users: int = 3, **kwargs: Any) -> tuple[str, b24sim.PortalSimulator]:
            kwargs = {"inactive": 0, "hidden": 0, "groups": 0, **kwargs}
            sim = b24sim.generate_portal(users, **kwargs)
            return await stack.enter_async_context(serve(b24sim.create_app(sim))), sim

        yield start


# --- the plan --------------------------------------------------------------------------------------


def test_plan_compares_settings_by_value_secrets_included(tmp_path: Path):
    secret = tmp_path / "hook"
    secret.write_text("https://a.example/rest/1/s3cret/\n")
    text = f"bitrix24:\n  - {{name: a, webhook_url_file: {secret}}}\n  - {{name: b, webhook_url: https://b.example/rest/1/x/}}\n"
    (tmp_path / "c.yaml").write_text(text)
    first = settings_of(load_config(tmp_path / "c.yaml"))
    assert first[SourceKey("bitrix24", "a")].webhook_url == Secret("https://a.example/rest/1/s3cret/")
    (tmp_path / "c.yaml").write_text(text.replace("x/}", "x/, interval: 2m}") + "pachca: {token: t}\n")
    secret.write_text("https://a.example/rest/1/s3cret/\n")  # re-read, same value: unchanged
    second = settings_of(load_config(tmp_path / "c.yaml"))
    assert ReloadPlan.between(first, second) == ReloadPlan(
        keep=(SourceKey("bitrix24", "a"),), replace=(SourceKey("bitrix24", "b"),),
        add=(SourceKey("pachca", "api.pachca.com"),))
    secret.write_text("https://a.example/rest/1/rotated/\n")
    third = settings_of(load_config(tmp_path / "c.yaml"))
    assert ReloadPlan.between(second, {k: v for k, v in third.items() if k.source == "bitrix24"}) == ReloadPlan(
        replace=(SourceKey("bitrix24", "a"),), keep=(SourceKey("bitrix24", "b"),),
        remove=(SourceKey("pachca", "api.pachca.com"),))


# --- (a)-(e) through the command line: SIGHUP and POST /-/reload ------------------------------------


@pytest.mark.parametrize("trigger", TRIGGERS)
async def test_unchanged_config_restarts_nothing_and_calls_only_on_schedule(tmp_path: Path, cli, portals,
                                                                            trigger: str):
    url, sim = await portals(users=3)  # a cycle: user.get, then one batch of 3 users x 5 roles
    workspace = pachcasim.generate_workspace(30)  # a new source reads GET /users once, then hourly
    async with serve(pachcasim.create_app(workspace)) as pachca_url:
        config = tmp_path / "c.yaml"
        config.write_text("bitrix24:\n" + portal_entry(url, sim, "acme") + f"pachca: {{name: ws, token: "
                          f"{workspace.token}, base_url: {pachca_url}/api/shared/v1, interval: 1s}}\n")
        exporter = await cli(config)
        await eventually(lambda: exporter.named("cycle_done", target="acme"), timeout=20)
        cycles = len(exporter.named("cycle_done", target="acme"))
        config.write_text(config.read_text())  # touched, not changed
        event = await exporter.reloaded(trigger)
        assert (event["kept"], event["replaced"], event["added"], event["removed"]) == (
            ["bitrix24/acme", "pachca/ws"], [], [], [])
        await eventually(lambda: len(exporter.named("cycle_done", target="acme")) >= cycles + 2
                         and len(exporter.named("cycle_done", target="ws")) >= cycles + 2, timeout=20)
        # a restarted source would cycle at once after the reload; these kept their one-second rhythm
        starts = [started_at(e) for e in exporter.named("cycle_done", target="acme")]
        assert all(later - earlier >= 0.9 for earlier, later in pairwise(starts)), starts
        # every request each API saw belongs to a cycle the exporter logged: nothing extra
        for target, received in (("acme", lambda: sim.received), ("ws", workspace.count)):
            await eventually(lambda t=target, r=received: r() == sum(
                e["requests"] for e in exporter.named("cycle_done", target=t)), timeout=5)
        assert workspace.count("/users") == 1  # the Pachca source kept its names: it was not restarted
        done = len(exporter.named("cycle_done", target="acme"))  # one batch each
        text = await exporter.metrics()
        assert value(text, "tasks_exporter_api_requests_total", target="acme", method="batch") >= done  # not reset
        assert (await reload_status(exporter))[0] == 1.0


@pytest.mark.parametrize("trigger", TRIGGERS)
async def test_added_portal_appears_and_removed_portal_goes(tmp_path: Path, cli, portals, trigger: str):
    (url_a, sim_a), (url_b, sim_b) = await portals(users=2), await portals(users=3, seed=9)
    config = tmp_path / "c.yaml"
    config.write_text("bitrix24:\n" + portal_entry(url_a, sim_a, "a"))
    exporter = await cli(config)
    await eventually(lambda: exporter.named("cycle_done", target="a"), timeout=20)
    config.write_text("bitrix24:\n" + portal_entry(url_a, sim_a, "a") + portal_entry(url_b, sim_b, "b"))
    event = await exporter.reloaded(trigger)
    assert (event["kept"], event["added"]) == (["bitrix24/a"], ["bitrix24/b"])

    async def has_b() -> bool:
        text = await exporter.metrics()
        return value(text, "bitrix24_tasks", portal="b") is not None and value(text, "bitrix24_users", portal="a") == 2
    await eventually(has_b, timeout=20)
    async with exporter.client() as client:
        assert "<td>b</td>" in (await client.get(f"{exporter.url}/")).text  # the landing page lists it too

    config.write_text("bitrix24:\n" + portal_entry(url_a, sim_a, "a"))
    event = await exporter.reloaded(trigger)
    assert (event["kept"], event["removed"]) == (["bitrix24/a"], ["bitrix24/b"])
    async def b_gone() -> str | None:  # every series of b, traffic counters too (/metrics re-renders)
        text = await exporter.metrics()
        return None if 'portal="b"' in text or 'target="b"' in text else text
    text = await eventually(b_gone, timeout=5)
    assert value(text, "bitrix24_users", portal="a") == 2
    async with exporter.client() as client:
        assert "<td>b</td>" not in (await client.get(f"{exporter.url}/")).text
    calls_b, cycles_a = sim_b.received, len(exporter.named("cycle_done", target="a"))
    await eventually(lambda: len(exporter.named("cycle_done", target="a")) >= cycles_a + 2, timeout=20)
    assert sim_b.received == calls_b  # b's loop really stopped


@pytest.mark.parametrize("trigger", TRIGGERS)
async def test_changed_secret_file_is_used_by_the_next_cycle(tmp_path: Path, cli, trigger: str):
    workspace = pachcasim.generate_workspace(20, tokens={"old-token": pachcasim.FULL_SCOPES,
                                                         "new-token": pachcasim.FULL_SCOPES})
    async with serve(pachcasim.create_app(workspace)) as url:
        token = tmp_path / "token"
        token.write_text("old-token\n")
        config = tmp_path / "c.yaml"
        config.write_text(f"pachca: {{name: ws, token_file: {token}, base_url: {url}/api/shared/v1, interval: 1s}}\n")
        exporter = await cli(config)
        await eventually(lambda: exporter.named("cycle_done", target="ws"), timeout=20)
        token.write_text("new-token\n")
        event = await exporter.reloaded(trigger)
        assert event["replaced"] == ["pachca/ws"]
        await eventually(lambda: any(r.token == "new-token" for r in workspace.requests), timeout=20)
        first_new = next(i for i, r in enumerate(workspace.requests) if r.token == "new-token")
        assert {r.token for r in workspace.requests[:first_new]} == {"old-token"}
        assert {r.token for r in workspace.requests[first_new:]} == {"new-token"}
        assert "new-token" not in json.dumps(exporter.events)
        assert "old-token" not in json.dumps(exporter.events)


@pytest.mark.parametrize("trigger", TRIGGERS)
async def test_invalid_config_is_refused_whole_and_the_old_one_keeps_serving(tmp_path: Path, cli, portals,
                                                                             trigger: str):
    url, sim = await portals(users=2)
    config = tmp_path / "c.yaml"
    good = "bitrix24:\n" + portal_entry(url, sim, "acme")
    config.write_text(good)
    exporter = await cli(config)
    await eventually(lambda: exporter.named("cycle_done"), timeout=20)
    _, loaded_at = await reload_status(exporter)
    config.write_text(good.replace("interval: 1s", "interval: often") + "  colour: red\n"
                      + "pachca: {base_url: ftp://x}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    problems = refused.value.problems
    assert len(problems) == 4, problems  # interval, colour, pachca.token, pachca.base_url: one line each
    response = await exporter.reload(trigger)
    if response is not None:
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text.splitlines() == problems
    failed = await eventually(lambda: exporter.named("config_reload_failed"), timeout=20)
    assert failed[0]["problems"] == problems
    assert failed[0]["level"] == "error"
    async def refused() -> bool:  # the reload metrics are part of what /metrics re-reads each second
        return await reload_status(exporter) == (0.0, loaded_at)
    await eventually(refused, timeout=5)
    cycles = len(exporter.named("cycle_done"))
    await eventually(lambda: len(exporter.named("cycle_done")) > cycles, timeout=20)  # the old config runs on
    assert value(await exporter.metrics(), "bitrix24_users", portal="acme") == 2

    config.write_text(good)
    await exporter.reloaded(trigger)

    async def accepted() -> bool:
        successful, at = await reload_status(exporter)
        return successful == 1.0 and at is not None and loaded_at is not None and at > loaded_at
    await eventually(accepted, timeout=5)


# --- (f) certificates --------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", TRIGGERS)
async def test_new_certificate_and_web_config_are_served_after_a_reload(tmp_path: Path, cli, trigger: str):
    first = make_certificate(tmp_path, "first")
    second = make_certificate(tmp_path, "second")
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config: {{cert_file: {first[0].name}, key_file: {first[1].name}}}\n")
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    exporter = await cli(config, web, tls=True, auth=("prometheus", "pass"))
    assert await served_certificate(exporter.port) == der_of(first[0])
    hashed = bcrypt.hashpw(b"pass", bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"tls_server_config: {{cert_file: {second[0]}, key_file: {second[1]}}}\n"
                   f"basic_auth_users: {{prometheus: '{hashed}'}}\n"
                   "http_server_config: {headers: {X-Frame-Options: deny}}\n")
    await exporter.reloaded(trigger)
    assert await served_certificate(exporter.port) == der_of(second[0])
    async with httpx.AsyncClient(verify=False) as client:
        refused = await client.get(f"{exporter.url}/metrics")
        allowed = await client.get(f"{exporter.url}/metrics", auth=("prometheus", "pass"))
    assert refused.status_code == 401
    assert allowed.status_code == 200
    assert refused.headers["X-Frame-Options"] == allowed.headers["X-Frame-Options"] == "deny"


async def test_reload_refuses_switching_between_http_and_https(tmp_path: Path, cli):
    cert, key = make_certificate(tmp_path, "server")
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config: {{cert_file: {cert}, key_file: {key}}}\n")
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    exporter = await cli(config, web, tls=True)
    web.write_text("basic_auth_users: {}\n")
    response = await exporter.reload("POST /-/reload")
    assert response is not None
    assert response.status_code == 400
    assert response.text == (f"web config {web}: tls_server_config: switching between HTTP and HTTPS needs a "
                             "restart\n")
    assert await served_certificate(exporter.port) == der_of(cert)


# --- in-process: what survives, and the portal's rate limit ------------------------------------------


async def test_unchanged_source_keeps_its_loop_and_a_changed_one_its_series_until_its_first_cycle(
        tmp_path: Path, portals):
    url, sim = await portals(users=2, groups=1)
    config = tmp_path / "c.yaml"
    config.write_text("bitrix24:\n" + portal_entry(url, sim, "a") + portal_entry(url, sim, "b", interval="1m"))
    async with running(load_config(config), config_file=str(config)) as exp:
        await eventually(lambda: exp.store.ready(), timeout=20)
        loop_a, source_b = exp.loops[0], exp.sources[1]
        cycles_b = exp.loops[1].cycles
        config.write_text("bitrix24:\n" + portal_entry(url, sim, "a")
                          + portal_entry(url, sim, "b", interval="1m", groups="[0, 1]"))
        assert await exp.reload() == []
        assert exp.loops[0] is loop_a
        assert exp.sources[1] is not source_b
        async with httpx.AsyncClient() as client:
            kept = (await client.get(f"{exp.url}/metrics")).text  # b's successor waits out b's interval
            assert value(kept, "bitrix24_tasks", portal="b", group_id="0") is not None
            assert value(kept, "bitrix24_tasks", portal="b", group_id="1") is None
            assert exp.loops[1].cycles == 0
            assert cycles_b == 1
            cycles_a = loop_a.cycles
            await eventually(lambda: loop_a.cycles > cycles_a, timeout=10)  # a's loop runs on, untouched


async def test_concurrent_reloads_are_served_one_at_a_time(tmp_path: Path, portals):
    url, sim = await portals(users=2)
    config = tmp_path / "c.yaml"
    config.write_text("bitrix24:\n" + portal_entry(url, sim, "acme", interval="1h"))
    buffer = io.StringIO()
    log.configure("info", "json", stream=buffer)
    async with running(load_config(config), config_file=str(config)) as exp:
        await eventually(lambda: exp.store.ready(), timeout=20)
        config.write_text("bitrix24:\n" + portal_entry(url, sim, "acme", interval="1s"))
        assert await asyncio.gather(*(exp.reload() for _ in range(3))) == [[], [], []]
        (loop,) = exp.loops
        await eventually(lambda: loop.cycles >= 2, timeout=20)
        # every user.get (direct, or inside a batch once the cycle is pipelined) came from the first source's
        # one cycle or from this loop's: no orphaned successor
        await eventually(lambda: sim.commands_by_method["user.get"] == 1 + loop.cycles, timeout=5)
    reloads = [e for line in buffer.getvalue().splitlines() if (e := json.loads(line))["event"] == "config_reloaded"]
    # the first replaced the source; the others found it already changed
    assert [(e["replaced"], e["kept"]) for e in reloads] == [(["bitrix24/acme"], []), ([], ["bitrix24/acme"]),
                                                             ([], ["bitrix24/acme"])]


async def test_replacing_a_source_mid_cycle_sends_nothing_over_the_portal_limit(tmp_path: Path, portals):
    # 40 users x 3 groups x 5 roles = 600 counters: 12 batches and a user.get, through a bucket of 8 at 4/s
    url, sim = await portals(users=40, groups=2, rate=4.0, burst=8)
    config = tmp_path / "c.yaml"
    config.write_text("bitrix24:\n" + portal_entry(url, sim, "acme", interval="1h", groups="[0, 1, 2]",
                                                   rate_limit="{requests_per_second: 4, burst: 8}"))
    async with running(load_config(config), config_file=str(config)) as exp:
        await eventually(lambda: sim.received >= 9, timeout=10)  # the portal's bucket is full now
        assert exp.loops[0].in_cycle
        config.write_text(config.read_text().replace("interval: 1h", "interval: 59m"))
        assert await exp.reload() == []
        (state,) = exp.store.states()
        await eventually(lambda: exp.store.states()[0].last_success is not None, timeout=20)
        assert exp.loops[0].cycles == 1
        assert state.last_success is None
    assert sim.received > 13
    assert sim.calls["batch"] >= 12
    assert sim.rejected == 0  # no QUERY_LIMIT_EXCEEDED across the reload


async def test_reload_endpoint_takes_post_only_behind_basic_auth(tmp_path: Path, cli):
    hashed = bcrypt.hashpw(b"pass", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users: {{prometheus: '{hashed}'}}\n")
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    exporter = await cli(config, web)
    async with httpx.AsyncClient() as client:
        assert (await client.post(f"{exporter.url}/-/reload")).status_code == 401
        for method in ("GET", "PUT", "DELETE"):
            answer = await client.request(method, f"{exporter.url}/-/reload", auth=("prometheus", "pass"))
            assert answer.status_code == 405, method
        done = await client.post(f"{exporter.url}/-/reload", auth=("prometheus", "pass"))
        assert (done.status_code, done.text) == (200, "config reloaded\n")
        assert (await client.get(f"{exporter.url}/healthz")).status_code == 200


# --- signals -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "action", "exit_expected"), [
    ("SIGUSR1", "ignored", False), ("SIGUSR2", "ignored", False), ("SIGQUIT", "shutdown", True),
    ("SIGINT", "shutdown", True), ("SIGALRM", "shutdown", True), ("SIGRTMIN", "shutdown", True),
])
async def test_every_signal_is_logged_and_none_kills_silently(tmp_path: Path, cli, name: str, action: str,
                                                              exit_expected: bool):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    exporter = await cli(config)
    exporter.send_signal(getattr(signal, name))
    event = (await eventually(lambda: exporter.named("signal_received"), timeout=10))[0]
    assert (event["signal"], event["action"]) == (name, action)
    if exit_expected:
        assert await exporter.exited() == 0
        assert exporter.named("stopped")
    else:
        assert (await exporter.metrics()).startswith("# HELP")
