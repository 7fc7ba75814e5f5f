"""The open-file limit: raised to the hard limit at start-up, and a warning with both figures when even that is
too low for the configured portals. Each case runs in a child process started under the limits it needs."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any

from exporter.config import Bitrix24Config, Config, PachcaConfig, Secret
from exporter.limits import RESERVED_FILES, open_files_needed

CHILD = """
import json, resource, sys
from structlog.testing import capture_logs
from exporter.limits import raise_open_files_limit
with capture_logs() as logs:
    limit = raise_open_files_limit(int(sys.argv[1]))
print(json.dumps({"returned": limit, "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                  "events": [e for e in logs if e["log_level"] == "warning"]}))
"""


def _run_under(soft: int, hard: int, needed: int) -> dict[str, Any]:
    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    result = subprocess.run([sys.executable, "-c", CHILD, str(needed)], preexec_fn=limits,
                            capture_output=True, text=True, timeout=60, check=True)
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def _hard() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    hard = _hard()
    answer = _run_under(soft=256, hard=hard, needed=100)
    assert answer["soft"] == answer["returned"] == hard
    assert answer["events"] == []


def test_a_hard_limit_below_what_the_portals_need_is_a_warning_with_both_figures() -> None:
    answer = _run_under(soft=200, hard=300, needed=1_900)
    assert answer["soft"] == 300
    (event,) = answer["events"]
    assert event["event"] == "open_files_limit_low"
    assert (event["limit"], event["needed"]) == (300, 1_900)


def test_files_needed_count_every_portal_connection_slot() -> None:
    portals = tuple(Bitrix24Config(name=f"p{i}", webhook_url=Secret(f"https://p{i}.example/rest/1/x/"),
                                   max_concurrency=16) for i in range(100))
    config = Config(bitrix24=portals, pachca=(PachcaConfig(name="team", token=Secret("t")),))
    assert open_files_needed(config) == 100 * 16 + 2 + RESERVED_FILES
    assert open_files_needed(config) > 1_024  # systemd's default soft limit would not do
