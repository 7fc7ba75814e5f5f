"""A real Prometheus (Debian's package) scrapes the exporter running on the simulators, on loopback.

Every query of every dashboard panel must return at least one series, and the recording and alert rules must load
(some panels read the series the recording rules write, as they do on a real deployment).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from bench.prometheus_log import prometheus_port
from exporter.app import running
from exporter.demo import demo_config
from tests.conftest import (
    MAX_LINE,
    ProcessOutput,
    eventually,
    load_dashboard_generator,
    recorded_metric_names,
    require_tool,
)

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = [ROOT / "prometheus" / "rules.yml", ROOT / "prometheus" / "alerts.yml"]  # as prometheus/prometheus.yml
pytestmark = pytest.mark.integration
ORGANISATION_PANELS = {"Departments by overdue tasks", "People of the department", "Workgroups by overdue tasks",
                       "People across Bitrix24 and Pachca", "Pachca teams", "People matched"}


@pytest.fixture
def prometheus_binary() -> str:
    return require_tool("prometheus", "Debian's prometheus package; make test installs it")


async def test_every_dashboard_panel_returns_data_and_rules_load(tmp_path, prometheus_binary):
    generator = load_dashboard_generator()
    board = json.loads((ROOT / "grafana" / "tasks-exporter.json").read_text())
    queries = list(generator.panel_queries(board))
    assert len(queries) >= 20
    assert ORGANISATION_PANELS.issubset(title for title, _, _ in queries)
    async with demo_config(interval=1.0, users=15, reminders=120) as config, running(config) as exporter:
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in RULE_FILES],
            "scrape_configs": [{"job_name": "tasks-exporter",
                                "static_configs": [{"targets": [exporter.url.removeprefix("http://")]}]}],
        }))
        proc = await asyncio.create_subprocess_exec(
            prometheus_binary, f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}", "--web.listen-address=127.0.0.1:0",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, limit=MAX_LINE)
        output = ProcessOutput(proc, "prometheus")
        try:
            port = await output.first(prometheus_port, 'its "Listening on" log line', within=30)
            api = f"http://127.0.0.1:{port}/api/v1"
            async with httpx.AsyncClient(timeout=5) as client:
                async def healthy_target() -> bool:
                    try:
                        targets = (await client.get(f"{api}/targets")).json()["data"]["activeTargets"]
                    except (httpx.TransportError, ValueError, KeyError):
                        return False
                    return any(t["health"] == "up" for t in targets)

                await eventually(healthy_target, timeout=30, interval=0.5)

                async def series(expr: str) -> int:
                    body = (await client.get(f"{api}/query", params={"query": expr})).json()
                    assert body["status"] == "success", (expr, body)
                    return len(body["data"]["result"])

                # The recorded series exist once the recording rules ran on scraped data.
                async def recorded() -> bool:
                    return all([await series(name) > 0 for name in sorted(recorded_metric_names())])

                await eventually(recorded, timeout=30, interval=0.5)

                empty: dict[str, str] = {}
                deadline = time.monotonic() + 60
                pending = {(title, ref): generator.concrete(expr, rate_interval="10s") for title, ref, expr in queries}
                while pending and time.monotonic() < deadline:
                    for key, expr in list(pending.items()):
                        if await series(expr) > 0:
                            del pending[key]
                    if pending:
                        await asyncio.sleep(0.5)
                empty = {f"{title} [{ref}]": expr for (title, ref), expr in pending.items()}
                assert not empty, f"panels without data: {json.dumps(empty, indent=1)}"

                # Every variable lists something: the selector of each label_values() / query_result() query.
                for variable in board["templating"]["list"]:
                    found = re.fullmatch(r"(?:label_values|query_result)\((.+?)(?:, \w+)?\)", variable["query"])
                    if variable["type"] == "query" and found:
                        assert await series(generator.concrete(found[1])) > 0, variable["name"]

                # One row per matched person in the people table, as many as the exporter reports matched.
                matched = (await client.get(f"{api}/query", params={
                    "query": 'sum(tasks_exporter_people{state="matched"})'})).json()["data"]["result"]
                people_table = next(expr for title, ref, expr in queries
                                    if (title, ref) == ("People across Bitrix24 and Pachca", "C"))
                assert matched
                assert await series(generator.concrete(people_table)) == int(float(matched[0]["value"][1]))

                shipped = [r for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]
                           for r in g["rules"]]

                async def evaluated_rules() -> list[dict]:
                    groups = (await client.get(f"{api}/rules")).json()["data"]["groups"]
                    loaded = [r for g in groups for r in g["rules"]]
                    return loaded if loaded and all(r["health"] != "unknown" for r in loaded) else []

                loaded = await eventually(evaluated_rules, timeout=20, interval=0.5)
                assert len(loaded) == len(shipped) > 0
                assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]
        finally:
            if proc.returncode is None:
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            await output.ended()
            (tmp_path / "prometheus.log").write_text(output.text)  # for a failure's post-mortem
