"""Shared fixtures: simulators on loopback, configs that point at them, and polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from exporter import log
from exporter.config import Bitrix24Config, RateLimit, Secret
from exporter.simulator import bitrix24 as b24sim
from exporter.simulator import serve
from exporter.snapshot import SourceKey, Store
from exporter.sources.bitrix24 import Bitrix24Source
from exporter.sources.bitrix24_client import RetryPolicy

FAST_RETRY = RetryPolicy(attempts=3, rate_limit_attempts=20, base_delay=0.01, max_delay=0.05,
                         default_operation_pause=0.2, min_operation_pause=0.02,
                         max_operation_pause=0.3)


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    log.configure("warning")


class PortalServer:
    """A running fake portal and a way to build sources against it."""

    def __init__(self, sim: b24sim.PortalSimulator, url: str) -> None:
        self.sim = sim
        self.url = url
        self.webhook = f"{url}{sim.webhook_path}"
        self.store = Store()
        self._sources: list[Bitrix24Source] = []

    def config(self, **overrides: Any) -> Bitrix24Config:
        values: dict[str, Any] = {"name": "test", "webhook_url": Secret(self.webhook), "interval": 60.0,
                                  "rate_limit": RateLimit(self.sim.rate, self.sim.burst)}
        values.update(overrides)
        return Bitrix24Config(**values)

    def source(self, **overrides: Any) -> Bitrix24Source:
        config = self.config(**overrides)
        telemetry = self.store.register(SourceKey("bitrix24", config.name), config.interval)
        source = Bitrix24Source(config, telemetry, retry=FAST_RETRY)
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


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing on CI: .ci/run must install Debian's prometheus package")
        pytest.skip("promtool not installed (make test installs Debian's prometheus package)")
    return path


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
