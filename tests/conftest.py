"""Shared test helpers, each written once: simulators on loopback and sources against them, fast retry
policies, reading /metrics, capturing logs, polling with a deadline, and the external tools tests call."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from aiohttp import web
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from exporter import log
from exporter.config import Bitrix24Config, PachcaConfig, PeopleConfig, RateLimit, Secret, parse_config
from exporter.errors import ConfigError
from exporter.simulator import bitrix24 as b24sim
from exporter.simulator import pachca as pachcasim
from exporter.simulator import serve
from exporter.simulator.pachca import DEMO_TOKEN, PREFIX, PachcaSimulator
from exporter.snapshot import ApiTelemetry, PortalSnapshot, ReminderTally, SourceKey, Store
from exporter.sources.bitrix24 import Bitrix24Source
from exporter.sources.bitrix24_client import OperationPause
from exporter.sources.pachca import PachcaSource
from exporter.sources.retries import RetryPolicy

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_780_000_000.0  # 2026-05-28T20:26:40Z: the fixed "now" of the Pachca workspaces and of Clock

# --- sources and simulators ----------------------------------------------------------------------------

# FAST_RETRY outlasts the simulators' rate limits; FAIL_FAST gives up after one retry, so a fault fails its
# cycle within a second; NO_WAIT never sleeps (for MockTransport answers). Likewise the OPERATION_TIME_LIMIT pause.
FAST_RETRY = RetryPolicy(attempts=3, rate_limit_attempts=20, base_delay=0.01, max_delay=0.05)
FAIL_FAST = RetryPolicy(attempts=2, rate_limit_attempts=2, base_delay=0.01, max_delay=0.02)
NO_WAIT = RetryPolicy(attempts=2, rate_limit_attempts=2, base_delay=0.0, max_delay=0.0)
FAST_PAUSE = OperationPause(default=0.2, least=0.02, most=0.3)
NO_PAUSE = OperationPause(default=0.0, least=0.0)
PACHCA_MAX_RETRY_AFTER = 1.0  # a Retry-After above this fails the cycle (the default cap is 60 s)

# the `reason` a cycle fails with under each simulator fault (Pachca's "wrong_types" fails no cycle: a record
# with fields of the wrong type costs only those fields)
B24_FAULT_REASONS = {
    "http_500": "server_error",
    "http_502": "server_error",
    "http_503": "server_error",
    "html": "invalid_response",
    "truncated_json": "invalid_response",
    "wrong_types": "invalid_response",
    "unauthorized": "auth",
    "insufficient_scope": "auth",
    "query_limit_storm": "rate_limited",
    "operation_time_limit": "rate_limited",
    "reset": "network_error",
    "timeout": "timeout",
}
PACHCA_FAULT_REASONS = {
    "http_500": "server_error",
    "http_502": "server_error",
    "http_503": "server_error",
    "html": "invalid_response",
    "truncated_json": "invalid_response",
    "unauthorized": "auth",
    "insufficient_scope": "auth",
    "rate_limit_storm": "rate_limited",
    "reset": "network_error",
    "timeout": "timeout",
}


class Clock:
    """A clock the test moves by hand (`clock.now += 3600`), for a source's `clock=`."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def register(store: Store, key: SourceKey, interval: float = 60.0) -> ApiTelemetry:
    """Track `key` in `store` as a source would be, for tests that write its states by hand."""
    telemetry = ApiTelemetry()
    store.register(SimpleNamespace(source=key.source, target=key.target, interval=interval, telemetry=telemetry))
    return telemetry


class PortalServer:
    """A running fake portal and a way to build sources against it."""

    def __init__(self, sim: b24sim.PortalSimulator, url: str) -> None:
        self.sim = sim
        self.url = url
        self.webhook = f"{url}{sim.webhook_path}"
        self._sources: list[Bitrix24Source] = []

    def config(self, **overrides: Any) -> Bitrix24Config:
        values: dict[str, Any] = {"name": "test", "webhook_url": Secret(self.webhook), "interval": 60.0,
                                  "rate_limit": RateLimit(self.sim.rate, self.sim.burst)}
        values.update(overrides)
        return Bitrix24Config(**values)

    def source(self, *, retry: RetryPolicy = FAST_RETRY, pause: OperationPause = FAST_PAUSE,
               clock: Callable[[], float] = time.monotonic, **overrides: Any) -> Bitrix24Source:
        """A source for this portal with fast retries and pauses, closed with the portal; `overrides` change
        its config."""
        source = Bitrix24Source(self.config(**overrides), retry=retry, pause=pause, clock=clock)
        self._sources.append(source)
        return source

    async def close(self) -> None:
        for source in self._sources:
            await source.aclose()


@pytest.fixture
async def portal_factory() -> AsyncIterator[Callable[..., Awaitable[PortalServer]]]:
    """Start fake portals: `server = await portal_factory(users=10, latency=0.01)`; `middlewares` (aiohttp's)
    see every request before the portal does, to note it or answer in its place (one that reads the body lets
    the portal read it first: the portal reads a body only while it is unread)."""
    stack = contextlib.AsyncExitStack()
    servers: list[PortalServer] = []

    async def start(users: int = 10, *, middlewares: Sequence[Any] = (), **kwargs: Any) -> PortalServer:
        kwargs.setdefault("inactive", 1)
        kwargs.setdefault("hidden", 0)
        sim = b24sim.generate_portal(users, **kwargs)
        app = b24sim.create_app(sim)
        app.middlewares.extend(middlewares)
        url = await stack.enter_async_context(serve(app))
        server = PortalServer(sim, url)
        servers.append(server)
        return server

    async with stack:
        yield start
        for server in servers:
            await server.close()


@pytest.fixture
async def pachca_url(sim: PachcaSimulator) -> AsyncIterator[str]:
    """The API base URL of the module's `sim` fixture (a fake Pachca workspace), served on loopback."""
    async with serve(pachcasim.create_app(sim)) as url:
        yield url + PREFIX
        sim.fault = None  # release requests the "timeout" fault still holds, so shutdown is quick


MakePachcaSource = Callable[..., PachcaSource]


@pytest.fixture
async def pachca_source(pachca_url: str) -> AsyncIterator[MakePachcaSource]:
    """Builds PachcaSources (workspace "team") against `pachca_url` (or `base_url=`, an AnswerServer's), with
    FAST_RETRY and a fixed Clock; `config` overrides the PachcaConfig. Closes them after the test."""
    made: list[PachcaSource] = []

    def make(*, token: str = DEMO_TOKEN, telemetry: ApiTelemetry | None = None, retry: RetryPolicy = FAST_RETRY,
             clock: Callable[[], float] | None = None, **config: Any) -> PachcaSource:
        settings = {"name": "team", "token": Secret(token), "base_url": pachca_url, "timeout": 2.0, **config}
        source = PachcaSource(PachcaConfig(**settings), telemetry, retry=retry,
                              max_retry_after=PACHCA_MAX_RETRY_AFTER, clock=clock or Clock())
        made.append(source)
        return source

    yield make
    for source in made:
        await source.aclose()


# --- answers of a test's choosing, over loopback ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """A request an AnswerServer received, as it came over the wire."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # case-insensitive
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


Respond = Callable[[Received], web.StreamResponse]


class AnswerServer:
    """A loopback HTTP server that answers every request (any method, any path) with what `respond` makes of
    it, and records the requests in `requests`: for the odd answers the simulators do not give."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[Received] = []
        self.url = ""  # http://127.0.0.1:PORT, once serving
        self.app = web.Application()
        self.app.router.add_route("*", "/{path:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.method, request.path, dict(request.query), request.headers, await request.read())
        self.requests.append(received)
        return self.respond(received)


@contextlib.asynccontextmanager
async def answering(respond: Respond) -> AsyncIterator[AnswerServer]:
    """An AnswerServer serving for the duration of the block."""
    server = AnswerServer(respond)
    async with serve(server.app) as url:
        server.url = url
        yield server


AnswerServers = Callable[[Respond], Awaitable[AnswerServer]]


@pytest.fixture
async def answer_server() -> AsyncIterator[AnswerServers]:
    """Start AnswerServers: `server = await answer_server(replaying([body], 503))`; stopped after the test."""
    async with contextlib.AsyncExitStack() as stack:
        async def start(respond: Respond) -> AnswerServer:
            return await stack.enter_async_context(answering(respond))

        yield start


def replaying(answers: Sequence[Any], status: int = 200, headers: Mapping[str, str] | None = None) -> Respond:
    """Answer the n-th request with `answers[n % len(answers)]` (a JSON value, or raw bytes) and `status`."""
    sent = itertools.count()

    def respond(_: Received) -> web.Response:
        body = answers[next(sent) % len(answers)]
        return web.Response(status=status, body=body if isinstance(body, bytes) else json.dumps(body).encode(),
                            headers=headers)

    return respond


def run_cycle(make_source: Callable[[str], Any], respond: Respond, produces: type) -> AnswerServer:
    """One collect() to completion by the source `make_source(url)` makes for an AnswerServer that answers with
    `respond`: it must give a `produces` value or a SourceFailure, nothing else. Returns the server."""
    from exporter.errors import SourceFailure

    async def cycle() -> tuple[Any, AnswerServer]:
        async with answering(respond) as server:
            source = make_source(server.url)
            try:
                return (await source.collect()).data, server
            except SourceFailure as failure:
                return failure, server
            finally:
                await source.aclose()

    outcome, server = asyncio.run(cycle())
    if isinstance(outcome, SourceFailure):
        assert outcome.reason
    else:
        assert isinstance(outcome, produces)
    return server


# scalars, lists and objects nested a few levels: what a JSON body may hold, for property-based tests
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=6), children, max_size=4), max_leaves=20)


def is_json(text: str) -> bool:
    try:
        httpx.Response(200, text=text).json()
    except ValueError:
        return False
    return True


# --- reading /metrics ----------------------------------------------------------------------------------

Labels = frozenset[tuple[str, str]]


def labels(**pairs: str) -> Labels:
    """A sample's label set, as `samples` keys it."""
    return frozenset(pairs.items())


def samples(text: str, name: str, **wanted: str) -> dict[Labels, float]:
    """Every sample `name` of an exposition whose labels include `wanted`, by its whole label set."""
    return {frozenset(s.labels.items()): s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and wanted.items() <= s.labels.items()}


def value(text: str, name: str, **wanted: str) -> float | None:
    """The one sample `name` whose labels include `wanted`; None when there is none."""
    found = samples(text, name, **wanted)
    assert len(found) <= 1, f"{name} {wanted} matches {len(found)} series"
    return next(iter(found.values()), None)


def series(text: str, name: str, *keys: str) -> set[tuple[str, ...]]:
    """The values of the labels `keys`, in that order, of every sample `name`."""
    return {tuple(dict(found)[k] for k in keys) for found in samples(text, name)}


def down_with(text: str, reason: str, **source: str) -> bool:
    """Is the source (`source=`, `target=`) down, with a failed cycle counted for `reason`?"""
    failed = value(text, "tasks_exporter_source_failures_total", reason=reason, **source) or 0
    return value(text, "tasks_exporter_source_up", **source) == 0 and failed >= 1


def exposition(*data: PortalSnapshot | ReminderTally, people: PeopleConfig | None = None, portal: str = "acme",
               workspace: str = "team") -> str:
    """The snapshot families rendered for one cycle's data of each source (portal `portal`, workspace
    `workspace`), as a store holding only them serves it."""
    from exporter.collector import SnapshotCollector
    from exporter.render import render

    store = Store()
    for part in data:
        key = SourceKey("bitrix24", portal) if isinstance(part, PortalSnapshot) else SourceKey("pachca", workspace)
        register(store, key)
        store.succeeded(key, part, 0.1)
    return render(SnapshotCollector(store, people=people).snapshot_families()).decode()


def both_sources_served(text: str) -> bool:
    """Each source of `--demo` has finished a cycle: task counters and reminders are on the page."""
    return "bitrix24_tasks{" in text and "pachca_reminders{" in text


async def scrape(url: str, headers: Mapping[str, str] | None = None) -> str:
    """The body of GET {url}/metrics, which must answer 200."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200, f"/metrics answered {response.status_code}"
    return response.text


async def scrape_until(url: str, check: Callable[[str], object], *, timeout: float = 10.0,  # noqa: ASYNC109 (see eventually)
                       interval: float = 0.02, headers: Mapping[str, str] | None = None,
                       starting: bool = False) -> str:
    """Scrape until `check(body)` holds; the body it held for. `starting`: the exporter is a process that
    may not listen yet, so a refused connection means "not yet"."""
    async def attempt() -> str | None:
        try:
            text = await scrape(url, headers)
        except httpx.TransportError:
            if not starting:
                raise
            return None
        return text if check(text) else None

    text: str = await eventually(attempt, timeout=timeout, interval=interval)
    return text


async def check_metrics(text: str) -> None:
    """`promtool check metrics` accepts the exposition without a word."""
    checker = await asyncio.create_subprocess_exec(promtool(), "check", "metrics", stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(checker.communicate(text.encode()), 30)
    assert checker.returncode == 0, out.decode()
    assert out.decode().strip() == ""


EXPORTER_PREFIXES = ("bitrix24_", "pachca_", "tasks_exporter_")
RECORDING_RULES = ROOT / "prometheus" / "rules.yml"


def metric_names(expr: str) -> set[str]:
    """Exporter metric names and recorded names (level:metric:operations, they have a colon) in a PromQL
    expression: strings, label matchers, label lists and range or subquery brackets left out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\b(?:on|ignoring|by|without|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}|\[[^]]*\]", " ", text)
    return {n for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text) if n.startswith(EXPORTER_PREFIXES) or ":" in n}


def recorded_metric_names() -> set[str]:
    """The series prometheus/rules.yml records (its `record:` names)."""
    groups = yaml.safe_load(RECORDING_RULES.read_text(encoding="utf-8"))["groups"]
    return {rule["record"] for group in groups for rule in group["rules"]}


def run_script(script: Path, *args: str, timeout: float) -> tuple[int, str, str]:
    """Run a repository script in its own process group: (returncode, stdout, stderr). On timeout the whole
    group (the script and whatever it spawned) is killed and TimeoutExpired raised."""
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, out, err


def contract_metric_names() -> set[str]:
    """Metric names the collector can expose, as exposed (counters gain `_total`): from its describe()."""
    from exporter.collector import SnapshotCollector

    return {m.name + "_total" if m.type == "counter" else m.name for m in SnapshotCollector.describe()}


# --- logs ------------------------------------------------------------------------------------------------

LogLines = Callable[[], list[dict[str, Any]]]
Events = list[MutableMapping[str, Any]]


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    log.configure("warning")


@pytest.fixture
def logs() -> Iterator[Events]:
    """Every structlog event the test logs, at any level, as the code passed it (not rendered; stdlib
    records such as httpx's are not in it): for tests of what is logged. Tests of how it is written read
    `json_log`."""
    log.configure("debug")
    with capture_logs() as captured:
        yield captured


def named(events: Events, event: str) -> Events:
    return [e for e in events if e["event"] == event]


def rendered_log(level: str) -> LogLines:
    """Route the log through the real pipeline, as JSON, into a buffer; the function returned parses what
    has been written so far (every line must parse)."""
    buffer = io.StringIO()
    log.configure(level, "json", stream=buffer)
    return lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.fixture
def json_log() -> LogLines:
    """The test's log at debug level as the exporter writes it (JSON lines, masked, stdlib records
    included), parsed: for tests of rendering, masking and tracebacks."""
    return rendered_log("debug")


# --- polling, processes, tools ------------------------------------------------------------------------


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:  # noqa: ASYNC109
    """Poll `check` until it returns a truthy value (or stops raising AssertionError), with a deadline. The
    deadline is a parameter, not an asyncio.timeout around the call: at the deadline the check's own last
    AssertionError is raised, which says what was wrong."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def free_port() -> int:
    """A port that was free a moment ago. Racy: anything may take it before the caller binds it, so only for
    what must be told its port up front (a container's healthcheck reads the flags); a server that can bind
    port 0 and say which port it got does that instead (exporter_process; Prometheus in
    test_integration_prometheus)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


T = TypeVar("T")
MAX_LINE = 2**20  # a subprocess's log line may be long (a JSON traceback); asyncio's line limit is 64 KiB


class ProcessOutput:
    """What a subprocess writes to stdout and stderr, read line by line as it comes (decoded, line ends kept):
    a test can wait for a line, such as the one that says where the process listens, and still read every
    line. The process must be started with stdout and stderr piped."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        assert proc.stdout is not None
        assert proc.stderr is not None
        self.proc = proc
        self.name = name
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._news = asyncio.Event()
        self._readers = (asyncio.create_task(self._read(proc.stdout, self.stdout)),
                         asyncio.create_task(self._read(proc.stderr, self.stderr)))

    async def _read(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        try:
            async for line in stream:
                into.append(line.decode("utf-8", "replace"))
                self._news.set()
        finally:
            self._news.set()

    @property
    def text(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    async def first(self, find: Callable[[str], T | None], what: str, *, within: float) -> T:
        """What `find` finds in the first stderr line it finds something in (`what` names that line in a
        failure). Fails at once, with the exit code and the output, when stderr ends (the process exited)
        before such a line; and after `within` seconds without one."""
        deadline = time.monotonic() + within
        seen = 0
        while True:
            for line in self.stderr[seen:]:
                found = find(line)
                if found is not None:
                    return found
            seen = len(self.stderr)
            if self._readers[1].done():
                self._readers[1].result()  # a reader's own failure (a line over MAX_LINE) is the error
                code = await asyncio.wait_for(self.proc.wait(), max(deadline - time.monotonic(), 1.0))
                raise AssertionError(f"{self.name} exited ({code}) before {what}:\n{self.text[-4000:]}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: {what} not within {within}s:\n{self.text[-4000:]}")
            self._news.clear()  # no await since the lines were looked at: none came in between
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), remaining)

    async def ended(self) -> None:
        """Return once both streams are read to their end (the process closed them, as it does on exit)."""
        await asyncio.gather(*self._readers)


CONSOLE_LISTENING = re.compile(r"\[info\s*\] listening\s.*?\baddress=(\S+)")


def listening_port(line: str) -> int | None:
    """The port of the exporter's `listening` log event (JSON or console format), the one it bound; None for
    any other line."""
    if line.startswith("{"):
        event = json.loads(line)
        address = event.get("address") if event.get("event") == "listening" else None
    else:
        found = CONSOLE_LISTENING.search(line)
        address = found[1] if found else None
    return None if address is None else int(address.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class ExporterRun:
    """A `python -m exporter` subprocess that listens: the process, its port and everything it writes."""

    proc: asyncio.subprocess.Process
    port: int
    output: ProcessOutput

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def exited(self, within: float = 15.0) -> int:
        """Its exit code, once it has exited and all it wrote has been read."""
        code = await asyncio.wait_for(self.proc.wait(), within)
        await asyncio.wait_for(self.output.ended(), within)
        return code


@contextlib.asynccontextmanager
async def exporter_process(*args: str, env: Mapping[str, str] | None = None,
                           within: float = 30.0) -> AsyncIterator[ExporterRun]:
    """`python -m exporter *args` on 127.0.0.1 port 0, once it listens: the port is the one its `listening`
    log event names (so `--log.level` must be info or debug), bound by the exporter itself, so no other
    process can take it between choosing and binding. stdout and stderr are read into `output`, every line;
    a process left running is killed."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "exporter", *args,
                                                "--web.listen-address", "127.0.0.1:0", env=env, limit=MAX_LINE,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    output = ProcessOutput(proc, "the exporter")
    try:
        port = await output.first(listening_port, "its `listening` log event", within=within)
        yield ExporterRun(proc, port, output)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it may have exited a moment ago
                proc.kill()
        await proc.wait()
        await output.ended()


def require_tool(name: str, how_to_install: str) -> str:
    """The path of a command-line tool (the venv's bin first, then PATH); skip without it, fail in CI."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed but CI is set: {how_to_install}")
        pytest.skip(f"{name} is not installed ({how_to_install})")
    return found


def promtool() -> str:
    return require_tool("promtool", "Debian's prometheus package; make test installs it")


# --- config ----------------------------------------------------------------------------------------------

CONFIG_ENV = {"HOOK": "https://acme.bitrix24.ru/rest/1/s3cr3tvalue/", "HOOK2": "https://beta.bitrix24.ru/rest/1/other/",
              "TOKEN": "tok-123456"}


def config_problems(doc: str, env: Mapping[str, str] = CONFIG_ENV) -> list[str]:
    """The problems parse_config finds in the YAML `doc` (it must refuse it), one line each."""
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_load(doc), dict(env))
    return err.value.problems


def load_dashboard_generator():  # type: ignore[no-untyped-def]
    """grafana/dashboard.py as a module (it is a script, not a package)."""
    import importlib.util
    import warnings

    pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk is in the test/dashboard extras")
    spec = importlib.util.spec_from_file_location("tasks_exporter_dashboard", ROOT / "grafana" / "dashboard.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        # The SDK marks the classic dashboard model "prefer dashboardv2" at import time. We keep the classic
        # model on purpose: it imports and provisions on any Grafana 12; the v2 API needs feature toggles.
        warnings.filterwarnings("ignore", "Prefer using dashboardv2", DeprecationWarning)
        spec.loader.exec_module(module)
    return module


# --- TLS -------------------------------------------------------------------------------------------------


def make_certificate(folder: Path, name: str, *, san: str = "IP:127.0.0.1", issuer: tuple[Path, Path] | None = None,
                     ca: bool = False, rsa: bool = False) -> tuple[Path, Path]:
    """(certificate, key) PEM files made by the openssl command: self-signed, or signed by `issuer` (cert, key);
    EC P-256 keys unless `rsa` (RSA cipher suites need an RSA key). Skips when openssl is missing."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    algorithm = ["-newkey", "rsa:2048"] if rsa else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    extensions = ["-addext", f"subjectAltName={san}"] if san else []
    if ca:
        extensions += ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]
    subject = ["-subj", f"/CN={name}", "-nodes", "-keyout", str(key)]
    if issuer is None:
        command = ["openssl", "req", "-x509", *algorithm, *subject, *extensions, "-days", "1", "-out", str(cert)]
        subprocess.run(command, check=True, capture_output=True)
    else:
        request = folder / f"{name}.csr"
        subprocess.run(["openssl", "req", "-new", *algorithm, *subject, *extensions, "-out", str(request)],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", str(request), "-CA", str(issuer[0]), "-CAkey",
                        str(issuer[1]), "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "1",
                        "-copy_extensions", "copy", "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def served_certificate(port: int, context: ssl.SSLContext | None = None) -> bytes:
    """The DER certificate a TLS server on loopback presents in a fresh handshake (not verified)."""
    if context is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return bytes(ssl_object.getpeercert(binary_form=True))
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def der_of(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())
