"""The process's open-file limit, raised to what the system allows, as Go programs (Prometheus among them) do.

Each Bitrix24 portal keeps up to `max_concurrency` connections open between cycles (bench/RESULTS.md: ~1,100
sockets at 100 portals), and systemd starts services with a soft limit of 1,024 open files: past it, new
connections fail with EMFILE and show up as network errors of whichever portal met it first. The hard limit
(524,288 under systemd, 1,048,576 in Docker) is there to be taken.
"""

from __future__ import annotations

import resource

import structlog

from exporter.config import Config

RESERVED_FILES = 256  # scrapes in flight, the listening socket, logs, the Python runtime's own files
log = structlog.get_logger()


def open_files_needed(config: Config) -> int:
    """Open files the configured sources may hold at once: every Bitrix24 connection slot, two per Pachca
    workspace (one listing at a time, plus the structure refresh), and a reserve for everything else."""
    return sum(p.max_concurrency for p in config.bitrix24) + 2 * len(config.pachca) + RESERVED_FILES


def raise_open_files_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; returns the soft limit now in force. A limit still below
    `needed` is a warning naming both figures (the fix is the service manager's LimitNOFILE), not an error:
    the exporter runs, and a portal that meets the limit fails its cycle with a network error."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # a sandbox may refuse it; the old limit stays
            log.warning("open_files_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("open_files_limit_low", limit=soft, needed=needed,
                    hint="raise LimitNOFILE (systemd) or --ulimit nofile (Docker), or lower max_concurrency")
    return soft
