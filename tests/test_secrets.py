"""Secrets never appear in logs, errors, the landing page or /metrics, whatever happens."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx

from exporter.simulator import bitrix24 as b24sim
from exporter.simulator import pachca as pachcasim
from exporter.simulator import serve
from tests.conftest import eventually, free_port

WEBHOOK_SECRET = "w3bh00k-s3cr3t-value"
PACHCA_TOKEN = "pachca-t0ken-value-42"


async def test_secrets_are_masked_in_every_output(tmp_path: Path):
    portal = b24sim.generate_portal(5, secret=WEBHOOK_SECRET)
    workspace = pachcasim.generate_workspace(40, tokens={PACHCA_TOKEN: pachcasim.FULL_SCOPES})
    async with serve(b24sim.create_app(portal)) as b24_url, serve(pachcasim.create_app(workspace)) as p_url:
        token_file = tmp_path / "token"
        token_file.write_text(PACHCA_TOKEN + "\n")
        config = tmp_path / "config.yaml"
        config.write_text(f"""
bitrix24: {{webhook_url: "${{HOOK}}", interval: 0.2s, timeout: 1s}}
pachca: {{token_file: "{token_file}", base_url: "{p_url}/api/shared/v1", interval: 0.2s, timeout: 1s}}
""")
        port = free_port()
        env = {**os.environ, "HOOK": f"{b24_url}/rest/1/{WEBHOOK_SECRET}/"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exporter", "--config", str(config), "--web.listen-address",
            f"127.0.0.1:{port}", "--log.level", "debug", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        pages = []
        try:
            async with httpx.AsyncClient() as client:
                async def metrics() -> str | None:
                    try:
                        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                    except httpx.TransportError:
                        return None
                    return text if "pachca_reminders{" in text and "bitrix24_tasks{" in text else None

                pages.append(await eventually(metrics, timeout=20))
                for fault in ("unauthorized", "http_500", "reset", "html"):
                    portal.fault = fault
                    workspace.fault = fault
                    await asyncio.sleep(0.5)
                    pages.append((await client.get(f"http://127.0.0.1:{port}/")).text)
                    pages.append((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
                portal.fault = workspace.fault = None
                portal.secret = "rotated"  # the portal now rejects our secret: errors name the cause only
                await asyncio.sleep(0.6)
                pages.append((await client.get(f"http://127.0.0.1:{port}/")).text)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 20)
    output = out.decode() + err.decode() + "".join(pages)
    assert "cycle_failed" in output and "reason=auth" in output  # the faults were really seen
    assert WEBHOOK_SECRET not in output
    assert PACHCA_TOKEN not in output
    assert "/rest/1/***" in output
