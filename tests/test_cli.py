"""The command line as a user meets it: exit codes, one-line errors, --demo serving real metrics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from exporter import __version__
from tests.conftest import free_port

EXE = [sys.executable, "-m", "exporter"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_version_matches_the_package():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"tasks-exporter {__version__}"


def test_check_config_accepts_the_example():
    example = Path(__file__).parent.parent / "config.example.yaml"
    result = run("--check-config", "--config", str(example),
                 env={"BITRIX24_WEBHOOK_URL": "https://a.bitrix24.ru/rest/1/xyzsecret/", "PACHCA_TOKEN": "tok"})
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_config_reports_each_problem_on_its_own_line(tmp_path: Path):
    bad = tmp_path / "c.yaml"
    bad.write_text("bitrix24:\n  webhook_url: ${MISSING_VAR}\n  interval: often\n  colour: red\n")
    result = run("--check-config", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "config error: bitrix24.colour: unknown key (expected one of: cycle_timeout, departments, exclude_users, "
        "groups, include_departments, interval, max_concurrency, max_groups, name, names, rate_limit, roles, "
        "structure_interval, timeout, users, webhook_url, webhook_url_file)",
        "config error: bitrix24.webhook_url: environment variable MISSING_VAR is not set",
        "config error: bitrix24.interval: invalid duration 'often' (use e.g. 30s, 5m, 1h30m)",
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [
    ["--config", "/nonexistent.yaml"],
    [],
    ["--config", "x.yaml", "--web.listen-address", "nonsense"],
])
def test_user_mistakes_exit_2_without_traceback(args):
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("config error: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_port_in_use_is_one_line(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("--config", str(config), "--web.listen-address", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1" in result.stderr and "Traceback" not in result.stderr


def test_demo_serves_task_counters_within_seconds_and_stops_on_sigterm():
    port = free_port()
    proc = subprocess.Popen([*EXE, "--demo", "--web.listen-address", f"127.0.0.1:{port}", "--log.format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                if "bitrix24_tasks{" in text and "pachca_reminders{" in text:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert "bitrix24_tasks{" in text
        assert "pachca_reminders{" in text
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert "Traceback" not in err
        assert '"event": "cycle_done"' in err and '"event": "stopped"' in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
