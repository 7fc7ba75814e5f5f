"""`bench/dashboard_query.py --quick` runs end to end against a real Prometheus (a smoke test: no timing is
asserted), and every panel query it times found data."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, load_dashboard_generator, require_tool, run_script

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quick_dashboard_benchmark_times_every_panel_query() -> None:
    require_tool("prometheus", "Debian's prometheus package; make test installs it")
    returncode, out, err = run_script(ROOT / "bench" / "dashboard_query.py", "--quick", timeout=120)
    assert returncode == 0, err[-3000:]
    assert "### Panel queries, heaviest first" in out
    assert "**Heaviest panel query:" in out
    panel_table = out.split("### Panel queries, heaviest first", 1)[1].split("###", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in panel_table.splitlines()
            if line.startswith("| ") and not line.startswith("| panel ")]
    series = {(row[0], row[1]): int(row[3].replace(",", "")) for row in rows}
    board = json.loads((ROOT / "grafana" / "tasks-exporter.json").read_text(encoding="utf-8"))
    expected = {(title, ref) for title, ref, _ in load_dashboard_generator().panel_queries(board)}
    assert set(series) == expected
    assert not [key for key, n in series.items() if n == 0], "panel queries without data"
