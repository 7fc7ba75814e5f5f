"""`bench/lone_portal.py` runs end to end: the simulator's CPU per batch, then steady-state cycles of a lone
portal (a smoke test: no timing is asserted)."""

from __future__ import annotations

import re

from tests.conftest import ROOT, run_script


def test_lone_portal_benchmark_measures_batches_and_cycles() -> None:
    returncode, out, err = run_script(ROOT / "bench" / "lone_portal.py", "--cycles", "2", "--gap", "1",
                                      timeout=90)
    assert returncode == 0, err[-3000:]
    assert re.search(r"50 counters [\d.]+ ms, user\.get pages \+ 48 counters [\d.]+ ms", out), out
    assert re.search(r"2 steady-state cycles \(\{\d+\} calls each\): median [\d.]+ ms", out), out
