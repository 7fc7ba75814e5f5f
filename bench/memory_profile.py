"""Where the exporter's memory goes at N users: a diagnostic behind the memory target (run.py does not run it).

    python bench/memory_profile.py --users 5000

A simulator (0 ms, no rate limit) runs in a child process; this process builds the exporter's pieces
step by step and prints, per step, what tracemalloc sees alive after it and at its peak, then the
allocation sites alive at the cycle's peak: when the last batch of the cycle has arrived. (RSS is left
out: tracemalloc's own bookkeeping inflates it; run.py measures RSS without tracemalloc.)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tracemalloc
from typing import Any

from procs import PortalSpec, child, memory_mb, portal_main
from report import table


class Steps:
    """Collects one row per step: traced memory alive after it, its peak, and the peak above the start."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []
        self.before = 0

    def begin(self) -> None:
        gc.collect()
        self.before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()

    def end(self, name: str) -> None:
        gc.collect()
        now, peak = tracemalloc.get_traced_memory()
        self.rows.append([name, f"{now / 2**20:.1f}", f"{peak / 2**20:.1f}", f"{(peak - self.before) / 2**20:+.1f}"])


async def profile(webhook: str) -> None:
    steps = Steps()
    tracemalloc.start()
    steps.begin()
    from exporter.collector import SnapshotCollector
    from exporter.config import Bitrix24Config, RateLimit, Secret
    from exporter.exposition import Exposition
    from exporter.snapshot import Store
    from exporter.sources.bitrix24 import Bitrix24Source
    steps.end("imports (exporter, aiohttp, orjson, prometheus_client)")

    store = Store()
    exposition = Exposition(SnapshotCollector(store).snapshot_sections)
    config = Bitrix24Config(name="profile", webhook_url=Secret(webhook), rate_limit=RateLimit(1e6, 10**6))
    source = Bitrix24Source(config)
    key = store.register(source)
    at_peak: list[tuple[int, Any]] = []  # (traced bytes, snapshot) at the end of each wave of batches
    wave = source._wave  # wrapped: to look at the cycle when a wave's answers are all in

    async def looked_at(*args: Any) -> Any:
        answers = await wave(*args)
        at_peak.append((tracemalloc.get_traced_memory()[0], tracemalloc.take_snapshot()))
        return answers

    source._wave = looked_at  # type: ignore[method-assign]
    for name in ("first cycle", "second cycle (the first snapshot is still served meanwhile)"):
        steps.begin()
        store.succeeded(key, (await source.collect()).data, 1.0)
        await asyncio.sleep(0)
        steps.end(name)
        steps.begin()
        exposition.render_now()
        steps.end(f"render after the {name.split()[0]} cycle")
    await source.aclose()
    print(table("Exporter memory by step (tracemalloc)", ["step", "alive after MB", "peak during MB",
                                                          "peak above the start of the step MB"], steps.rows))
    traced, fullest = max(at_peak[-2:], key=lambda p: p[0])  # the second cycle's wave(s)
    sites = [[str(s.traceback[0]), f"{s.size / 2**20:.1f}", f"{s.count:,}"]
             for s in fullest.statistics("lineno")[:12]]
    print(table(f"Alive when the second cycle's last batch has arrived ({traced / 2**20:.1f} MB traced; "
                "top 12 allocation sites)",
                ["site", "MB", "blocks"], sites))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    users = parser.parse_args().users
    with child("portal", portal_main, PortalSpec(users, latency=0.0, rate_limited=False)) as portal:
        print(f"# memory profile: {users:,} users x 5 roles, RSS before the exporter's imports "
              f"{memory_mb():.1f} MB\n")
        asyncio.run(profile(portal.ready["webhook"]))


if __name__ == "__main__":
    main()
