"""`bench/run.py --quick` runs end to end and prints its tables (a smoke test: no timing is asserted)."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT, run_script


def test_quick_benchmark_prints_every_table() -> None:
    returncode, out, err = run_script(ROOT / "bench" / "run.py", "--quick", timeout=90)
    assert returncode == 0, err[-3000:]
    assert out.startswith("# tasks-exporter benchmark")
    for header in ("| client ", "| users ", "| reminders ", "| series ", "| target "):
        assert header in out, f"missing table header {header!r}"
    fast_missing = importlib.util.find_spec("fast_bitrix24") is None
    assert "| fast-bitrix24 " in out
    assert ("not installed" in out) == fast_missing
