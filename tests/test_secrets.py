"""Secrets never appear in logs, errors, the landing page or /metrics, whatever happens."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path

import httpx

from exporter.simulator import bitrix24 as b24sim
from exporter.simulator import pachca as pachcasim
from exporter.simulator import serve
from tests.conftest import (
    B24_FAULT_REASONS,
    PACHCA_FAULT_REASONS,
    eventually,
    exporter_process,
    samples,
    scrape,
    scrape_until,
)

WEBHOOK_SECRET = "w3bh00k-s3cr3t-value"
PACHCA_TOKEN = "pachca-t0ken-value-42"
# one portal and one workspace per fault, all at once: the exporter runs with its default retry policy, so a
# retried fault takes ~10 s to fail its cycle, and in parallel they cost that once
FAULTS = ("unauthorized", "http_500", "reset", "html")
ROTATED = "rotated"  # a portal whose webhook secret changes under the exporter: errors name the cause only
FIELD = re.compile(r"\b(source|target|reason)=(\S+)")


def failed_cycles(lines: list[str]) -> set[tuple[str, str, str]]:
    """(source, target, reason) of every cycle_failed event among console log lines."""
    return {(f["source"], f["target"], f["reason"]) for f in
            (dict(FIELD.findall(line)) for line in lines if " cycle_failed " in line)}


def targets_up(text: str) -> set[tuple[str, str]]:
    return {(dict(key)["source"], dict(key)["target"])
            for key, up in samples(text, "tasks_exporter_source_up").items() if up == 1}


async def test_secrets_are_masked_in_every_output(tmp_path: Path):
    portals = {name: b24sim.generate_portal(5, secret=WEBHOOK_SECRET) for name in (*FAULTS, ROTATED)}
    workspaces = {name: pachcasim.generate_workspace(40, tokens={PACHCA_TOKEN: pachcasim.FULL_SCOPES})
                  for name in FAULTS}
    expected = ({("bitrix24", name, B24_FAULT_REASONS[name]) for name in FAULTS} | {("bitrix24", ROTATED, "auth")}
                | {("pachca", name, PACHCA_FAULT_REASONS[name]) for name in FAULTS})
    async with contextlib.AsyncExitStack() as stack:
        env = dict(os.environ)
        b24_entries, pachca_entries = [], []
        for name, portal in portals.items():
            url = await stack.enter_async_context(serve(b24sim.create_app(portal)))
            env[f"HOOK_{name.upper()}"] = f"{url}/rest/1/{WEBHOOK_SECRET}/"
            b24_entries.append(f'  - {{name: {name}, webhook_url: "${{HOOK_{name.upper()}}}", interval: 0.2s, '
                               'timeout: 1s}')
        token_file = tmp_path / "token"
        token_file.write_text(PACHCA_TOKEN + "\n")
        for name, workspace in workspaces.items():
            url = await stack.enter_async_context(serve(pachcasim.create_app(workspace)))
            pachca_entries.append(f'  - {{name: {name}, token_file: "{token_file}", base_url: "{url}/api/shared/v1", '
                                  'interval: 0.2s, timeout: 1s}')
        config = tmp_path / "config.yaml"
        config.write_text("\n".join(["bitrix24:", *b24_entries, "pachca:", *pachca_entries, ""]))
        exporter = await stack.enter_async_context(exporter_process("--config", str(config), "--log.level", "debug",
                                                                    env=env))
        url, lines = exporter.url, exporter.output.stderr  # the log, every line of it, as it comes
        pages = []
        try:
            every_target = {(s, t) for s, t, _ in expected}
            pages.append(await scrape_until(url, lambda t: targets_up(t) == every_target, timeout=20,
                                            starting=True))
            seen = len(lines)
            for name in FAULTS:
                portals[name].fault = workspaces[name].fault = name
            portals[ROTATED].secret = "rotated"

            def each_fault_failed_a_cycle_for_its_reason() -> bool:
                missing = expected - failed_cycles(lines[seen:])
                assert not missing, f"no cycle_failed event for {sorted(missing)}"
                return True

            await eventually(each_fault_failed_a_cycle_for_its_reason, timeout=40, interval=0.1)
            async with httpx.AsyncClient() as client:
                pages.append((await client.get(f"{url}/")).text)
            pages.append(await scrape(url))
        finally:
            exporter.proc.send_signal(signal.SIGTERM)
            await exporter.exited(20)
    output = exporter.output.text + "".join(pages)
    assert WEBHOOK_SECRET not in output
    assert PACHCA_TOKEN not in output
    assert "/rest/1/***" in output
