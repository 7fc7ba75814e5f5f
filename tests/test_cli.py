"""The command line as a user meets it: exit codes (0, 1 runtime, 2 usage), one-line errors, --demo serving."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import parse_listen
from tests.conftest import ROOT, both_sources_served, exporter_process, scrape, scrape_until

EXE = [sys.executable, "-m", "exporter"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_check_config_accepts_the_example():
    example = ROOT / "config.example.yaml"
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
])
def test_config_mistakes_exit_2_with_one_line(args):
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("config error: ")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "error"), [
    (["--demo", "--web.listen-address", "nonsense"],
     "argument --web.listen-address: 'nonsense' is not HOST:PORT (e.g. 0.0.0.0:10057)"),
    (["--demo", "--web.listen-address", "127.0.0.1:65536"],
     "argument --web.listen-address: '127.0.0.1:65536' is not HOST:PORT (e.g. 0.0.0.0:10057)"),
    (["--demo", "--config", "c.yaml"], "argument --config: not allowed with argument --demo"),
    (["--demo", "--check-config"], "argument --check-config: not allowed with argument --demo (it checks --config)"),
])
def test_usage_mistakes_exit_2_with_the_usage(args, error):
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: tasks-exporter ")
    assert result.stderr.strip().splitlines()[-1] == f"tasks-exporter: error: {error}"
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    (":10057", ("0.0.0.0", 10057)),
    ("[::1]:0", ("::1", 0)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_listen_address_parses_host_and_port(value, expected):
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1", "127.0.0.1:", "127.0.0.1:-1", "127.0.0.1:70000",
                                   "127.0.0.1:\u00b2", "127.0.0.1:1e3"])
def test_listen_address_rejects_what_is_not_host_port(value):
    with pytest.raises(argparse.ArgumentTypeError, match="is not HOST:PORT"):
        parse_listen(value)


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_port_in_use_is_one_error_line(tmp_path: Path, fmt: str):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("--config", str(config), "--web.listen-address", f"127.0.0.1:{port}", "--log.format", fmt)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "cannot_listen" in line]
    if fmt == "json":
        event = json.loads(line)
        assert (event["level"], event["event"], event["address"]) == ("error", "cannot_listen", f"127.0.0.1:{port}")
        assert event["detail"] == os.strerror(errno.EADDRINUSE)
    else:
        assert "[error" in line
        assert f"address=127.0.0.1:{port}" in line


# Exporter.start raising stands for a bug anywhere between flags and serving
BROKEN_START = """
import sys
from exporter import app, cli

async def start(self):
    raise RuntimeError("wiring bug")

app.Exporter.start = start
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_bug_that_stops_the_exporter_is_logged_with_its_cause_and_exits_1(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    result = subprocess.run([sys.executable, "-c", BROKEN_START, "--config", str(config), "--log.format", "json",
                             "--web.listen-address", "127.0.0.1:0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stderr.splitlines()]
    (failed,) = [e for e in events if e["level"] == "error"]
    assert failed["event"] == "exporter_failed"
    assert failed["error"] == "RuntimeError: wiring bug"
    assert failed["exception"].startswith("Traceback")
    assert "in start" in failed["exception"]
    assert "cannot_listen" not in result.stderr


@pytest.mark.parametrize("fmt", ["console", "json"])
async def test_port_0_serves_on_the_port_the_listening_event_names(tmp_path: Path, fmt: str):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    async with exporter_process("--config", str(config), "--log.format", fmt) as exporter:
        assert exporter.port != 0
        assert "tasks_exporter_build_info" in await scrape(exporter.url)


async def test_demo_serves_task_counters_within_seconds_and_stops_on_sigterm():
    async with exporter_process("--demo", "--log.format", "json") as exporter:
        await scrape_until(exporter.url, both_sources_served, timeout=20, interval=0.1, starting=True)
        exporter.proc.send_signal(signal.SIGTERM)
        code = await exporter.exited(15)
    assert code == 0
    err = "".join(exporter.output.stderr)
    events = [json.loads(line) for line in err.splitlines()]
    assert "Traceback" not in err
    assert {"cycle_done", "stopped"} <= {e["event"] for e in events}
