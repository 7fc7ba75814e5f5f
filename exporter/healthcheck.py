"""The image's HEALTHCHECK: GET /healthz on the address the exporter in this container listens on.

Docker runs the check beside the exporter, which is PID 1 (or a child of `--init`'s PID 1, whose command line
still carries the exporter's flags), so the address comes from PID 1's command line and
`docker run IMAGE --web.listen-address 127.0.0.1:9100` needs no matching `--health-cmd`. The flags are parsed
by the exporter's own parser, so defaults and spellings (`--web.listen-address=...`) cannot drift apart.
Exit 0 is healthy, 1 unhealthy (with one line saying why, which `docker inspect` shows).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from exporter.cli import parse_args
from exporter.errors import ConfigError

PID1_CMDLINE = Path("/proc/1/cmdline")
TIMEOUT_S = 4.0  # under the Dockerfile's HEALTHCHECK --timeout=5s
# A wildcard listen address accepts connections on loopback too.
LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def exporter_flags(cmdline: Sequence[str]) -> list[str]:
    """The flags after the `tasks-exporter` script (or `python -m exporter`) in a process's command line.

    `/proc/1/cmdline` of the image is `/opt/tasks-exporter/bin/python /opt/tasks-exporter/bin/tasks-exporter
    --demo ...` (the script's shebang), with `--init` it starts with `/sbin/docker-init --`.
    """
    for n, arg in enumerate(cmdline):
        if PurePosixPath(arg).name == "tasks-exporter" or (arg == "exporter" and n > 0 and cmdline[n - 1] == "-m"):
            return list(cmdline[n + 1:])
    return []


def healthz_url(cmdline: Sequence[str]) -> str:
    """The /healthz URL for the exporter started with `cmdline`; raises ConfigError for flags it cannot read."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            host, port = parse_args(exporter_flags(cmdline)).listen
    except SystemExit:
        reason = stderr.getvalue().strip().splitlines()
        raise ConfigError([f"the exporter's flags: {reason[-1] if reason else 'not parseable'}"]) from None
    host = LOOPBACK.get(host, host)
    return f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"


def check(url: str, timeout: float = TIMEOUT_S) -> str | None:
    """None when `url` answers 200, else why not."""
    # No proxy: a loopback check must not leave the container through an HTTP_PROXY from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            status = int(response.status)
    # URLError, HTTPError (a status other than 2xx), timeouts and refused connections are OSErrors.
    except (OSError, http.client.HTTPException) as exc:
        return f"GET {url}: {exc}"
    return None if status == 200 else f"GET {url}: HTTP {status}"


def main() -> int:
    try:
        # NUL-separated, with a NUL after the last argument.
        cmdline = PID1_CMDLINE.read_bytes().decode(errors="replace").removesuffix("\0").split("\0")
        problem = check(healthz_url(cmdline))
    except OSError as exc:
        problem = f"{PID1_CMDLINE}: {exc.strerror or exc}"
    except ConfigError as exc:
        problem = "; ".join(exc.problems)
    print(f"unhealthy: {problem}" if problem else "healthy")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
