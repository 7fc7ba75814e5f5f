"""The port a Prometheus started on 127.0.0.1:0 bound, read from its log: bench/dashboard_query.py and
tests/test_integration_prometheus.py both start it so (a port chosen up front could be taken before it binds).

The bench scripts import this as `prometheus_log` (their folder is sys.path[0]); the tests as
`bench.prometheus_log` (pytest puts the repository root on sys.path, as for `tests.conftest`). So it imports
nothing from the bench folder.
"""

from __future__ import annotations

import re

# exporter-toolkit's line, in go-kit's logfmt before Prometheus 3.0 and slog's text format since:
# `... msg="Listening on" address=127.0.0.1:39415`
LISTENING = re.compile(r'msg="Listening on".*?\baddress=\S+:(\d+)')


def prometheus_port(log: str) -> int | None:
    """The port of the first `msg="Listening on"` line in `log` (one line or the whole log); None without one."""
    found = LISTENING.search(log)
    return int(found[1]) if found else None
