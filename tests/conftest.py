"""Shared fixtures: simulators on loopback, configs that point at them, and polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from exporter import log
from exporter.config import Bitrix24Config, RateLimit, Secret
from exporter.simulator import bitrix24 as b24sim
from exporter.simulator import serve
from exporter.snapshot import ApiTelemetry, SourceKey, Store
from exporter.sources.bitrix24 import Bitrix24Source
from exporter.sources.bitrix24_client import OperationPause
from exporter.sources.retries import RetryPolicy

FAST_RETRY = RetryPolicy(attempts=3, rate_limit_attempts=20, base_delay=0.01, max_delay=0.05)
FAST_PAUSE = OperationPause(default=0.2, least=0.02, most=0.3)


def register(store: Store, key: SourceKey, interval: float = 60.0) -> ApiTelemetry:
    """Track `key` in `store` as a source would be, for tests that write its states by hand."""
    telemetry = ApiTelemetry()
    store.register(SimpleNamespace(source=key.source, target=key.target, interval=interval, telemetry=telemetry))
    return telemetry

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


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    log.configure("warning")


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
               **overrides: Any) -> Bitrix24Source:
        """A source for this portal with fast retries and pauses; `overrides` change its config."""
        source = Bitrix24Source(self.config(**overrides), retry=retry, pause=pause)
        self._sources.append(source)
        return source

    async def close(self) -> None:
        for source in self._sources:
            await source.aclose()


@pytest.fixture
async def portal_factory() -> AsyncIterator[Callable[..., Awaitable[PortalServer]]]:
    """Start fake portals: `server = await portal_factory(users=10, latency=0.01)`."""
    stack = contextlib.AsyncExitStack()
    servers: list[PortalServer] = []

    async def start(users: int = 10, **kwargs: Any) -> PortalServer:
        kwargs.setdefault("inactive", 1)
        kwargs.setdefault("hidden", 0)
        sim = b24sim.generate_portal(users, **kwargs)
        url = await stack.enter_async_context(serve(b24sim.create_app(sim)))
        server = PortalServer(sim, url)
        servers.append(server)
        return server

    async with stack:
        yield start
        for server in servers:
            await server.close()


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll `check` until it returns a truthy value (or stops raising AssertionError), with a deadline."""
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def contract_metric_names() -> set[str]:
    """Metric names the collector can expose, as exposed (counters gain `_total`): from its describe()."""
    from exporter.collector import SnapshotCollector

    return {m.name + "_total" if m.type == "counter" else m.name for m in SnapshotCollector.describe()}


def load_dashboard_generator():  # type: ignore[no-untyped-def]
    """grafana/dashboard.py as a module (it is a script, not a package)."""
    import importlib.util
    import warnings
    from pathlib import Path

    pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk is in the test/dashboard extras")
    path = Path(__file__).resolve().parents[1] / "grafana" / "dashboard.py"
    spec = importlib.util.spec_from_file_location("tasks_exporter_dashboard", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        # The SDK marks the classic dashboard model "prefer dashboardv2" at import time. We keep the classic
        # model on purpose: it imports and provisions on any Grafana 12; the v2 API needs feature toggles.
        warnings.filterwarnings("ignore", "Prefer using dashboardv2", DeprecationWarning)
        spec.loader.exec_module(module)
    return module


class ReplayTransport(httpx.MockTransport):
    """Answers every request with the next of `answers` (JSON values, or raw bytes) and `status`."""

    def __init__(self, answers: list[Any], status: int, headers: dict[str, str] | None = None) -> None:
        self.calls: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            body = answers[len(self.calls) % len(answers)]
            self.calls.append(request)
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            return httpx.Response(status, content=content, headers=headers)

        super().__init__(handler)


def run_cycle(source: Any, produces: type) -> None:
    """One collect() to completion: it must give a `produces` value or a SourceFailure, nothing else."""
    from exporter.errors import SourceFailure

    async def cycle() -> None:
        try:
            data = (await source.collect()).data
        except SourceFailure as failure:
            assert failure.reason
        else:
            assert isinstance(data, produces)
        finally:
            await source.aclose()

    asyncio.run(cycle())


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
