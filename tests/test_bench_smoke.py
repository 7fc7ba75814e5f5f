"""`bench/run.py --quick` runs end to end and prints its tables (a smoke test: no timing is asserted)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys

from tests.conftest import ROOT


def test_quick_benchmark_prints_every_table() -> None:
    bench = subprocess.Popen([sys.executable, str(ROOT / "bench" / "run.py"), "--quick"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = bench.communicate(timeout=55)
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)  # the benchmark and the processes it spawned
        bench.communicate()
        raise
    assert bench.returncode == 0, err[-3000:]
    assert out.startswith("# tasks-exporter benchmark")
    for header in ("| client ", "| users ", "| reminders ", "| series ", "| target "):
        assert header in out, f"missing table header {header!r}"
    fast_missing = importlib.util.find_spec("fast_bitrix24") is None
    assert "| fast-bitrix24 " in out
    assert ("not installed" in out) == fast_missing
