"""The issue's targets, judged from the measured rows: one line each with the numbers behind the verdict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bitrix24_bench import BURST, FAST, Row
from report import table

RATIO_TARGET = 1.1
CALLS_FACTOR = 40
MEDIAN_MS = 5.0
SAME_LATENCY = (1.25, 0.5)  # "independent of API latency": busy median within 25 % or 0.5 ms of idle
MEMORY_MB = 80.0
LATENCY = 0.05
SMALL_LIMIT = (1.5, 0.030)  # issue 14: a 100-user steady-state cycle within 1.5 round trips + 30 ms
LARGE_RATIO = 1.05  # issue 14: 1,000 and 5,000 users within 1.05x the bound
PORTALS_RSS_MB = 250.0  # issue 14, 100 portals x 100 users in one process
PORTALS_CPU = 0.05  # of one core
PORTALS_MEDIAN_MS, PORTALS_P99_MS = 5.0, 20.0
PORTALS_RATIO = 1.1

Verdict = tuple[str, str, str]


def targets_table(rows: list[Row], metrics: list[dict[str, Any]], memory: list[dict[str, Any]],
                  portals: dict[str, Any] | None = None, *, quick: bool) -> str:
    lines = [_bound(rows), _versus_fast(rows), _fewer_calls(rows), _no_rejections(rows)] if rows else []
    lines += _scrapes(metrics) if metrics else []
    lines += [_memory(rows, memory)] if rows or memory else []
    lines += [_steady_small(rows), _faster_everywhere(rows), _large_bound(rows)] if rows else []
    lines += _portals(portals)
    notes = ["quick run: sizes are small, so these verdicts are not the issue's; see bench/RESULTS.md"] if quick else []
    return table("Targets", ["target", "measured", "met"], lines, notes)


def _ours(rows: Sequence[Row], single: bool = True) -> list[Row]:
    return [r for r in rows if r.job.client == "ours" and r.measured and (r.job.cycles == 1 or not single)]


def _bound(rows: list[Row]) -> Verdict:
    ours = _ours(rows)
    parts, missed = [], []
    for r in ours:
        ratio = (r.wall or 0.0) / r.bound
        under_burst = " (under the burst: latency-bound)" if (r.calls or 0) <= BURST else ""
        parts.append(f"{r.job.users:,} users: {ratio:.2f}x{under_burst}")
        if ratio > RATIO_TARGET:
            missed.append(f"{r.job.users:,}")
    verdict = "met" if ours and not missed else f"not met at {', '.join(missed)} users" if missed else "not run"
    return (f"Bitrix24 cycle within {RATIO_TARGET}x of the leaky-bucket bound", "; ".join(parts), verdict)


def _versus_fast(rows: list[Row]) -> Verdict:
    parts, slower = [], []
    for r in _ours(rows):
        fast = [f for f in rows if f.job.client in FAST and f.job.users == r.job.users
                and f.status not in ("not installed", "computed, not run")]
        if not fast:
            continue
        seen = []
        for f in fast:
            if f.measured and f.complete and f.wall is not None:
                seen.append(f"{f.job.client} {f.wall:.2f} s")
                if (r.wall or 0.0) > f.wall:
                    slower.append(f"{r.job.users:,} ({f.job.client})")
            else:
                seen.append(f"{f.job.client} {f.status}")
        parts.append(f"{r.job.users:,} users: ours {r.wall:.2f} s vs " + ", ".join(seen))
    if not parts:
        return ("not slower than fast-bitrix24", "fast-bitrix24 not installed or not run", "not evaluated")
    return ("not slower than fast-bitrix24", "; ".join(parts), f"not met at {', '.join(slower)}" if slower else "met")


def _fewer_calls(rows: list[Row]) -> Verdict:
    parts, short = [], []
    for r in _ours(rows):
        naive = next((n for n in rows if n.job.client == "naive" and n.job.users == r.job.users), None)
        if naive is None or not naive.calls or not r.calls:
            continue
        factor = naive.calls / r.calls
        how = "" if naive.measured else " (naive computed)"
        parts.append(f"{r.job.users:,} users: {naive.calls:,} / {r.calls:,} = {factor:.1f}x{how}")
        if factor < CALLS_FACTOR:
            short.append(f"{r.job.users:,}")
    return (f">= {CALLS_FACTOR}x fewer HTTP calls than the naive client", "; ".join(parts),
            f"not met at {', '.join(short)} users" if short else "met")


def _no_rejections(rows: list[Row]) -> Verdict:
    ours = _ours(rows, single=False)
    total = sum(r.rejected or 0 for r in ours)
    calls = sum(r.calls or 0 for r in ours)
    return ("zero rate-limit answers in steady state",
            f"{total} in {calls:,} calls over {len(ours)} runs (back-to-back cycles included)",
            "met" if ours and total == 0 else "not met")


def _scrapes(metrics: list[dict[str, Any]]) -> list[Verdict]:
    loaded = [m for m in metrics if m["scrapers"] > 1]
    if not loaded:
        return [(f"/metrics median under {MEDIAN_MS:g} ms", "not run", "not evaluated")]
    smallest = min(m["series"] for m in loaded)
    at = [m for m in loaded if m["series"] == smallest]
    single = [m for m in metrics if m["series"] == smallest and m["scrapers"] == 1]
    worst = max(m["median_ms"] for m in at)
    measured = [f"{_label(m)}: {m['median_ms']:.2f} ms (p99 {m['p99_ms']:.2f})" for m in at]
    measured += [f"1 scraper: {m['median_ms']:.2f} ms" for m in single]
    first = (f"/metrics median under {MEDIAN_MS:g} ms at {smallest:,} series ({at[0]['scrapers']} scrapers)",
             "; ".join(measured), "met" if worst < MEDIAN_MS else "not met")
    parts, moved = [], []
    for series in sorted({m["series"] for m in loaded}):
        idle = next(m for m in loaded if m["series"] == series and m["condition"] == "idle")
        busy = next(m for m in loaded if m["series"] == series and m["condition"] == "busy")
        parts.append(f"{series:,}: idle {idle['median_ms']:.2f} ms, cycle in flight {busy['median_ms']:.2f} ms")
        factor, slack = SAME_LATENCY
        if busy["median_ms"] > max(idle["median_ms"] * factor, idle["median_ms"] + slack):
            moved.append(f"{series:,}")
    second = ("/metrics independent of API latency (median within 25 % or 0.5 ms of idle while a "
              "500 ms-latency cycle is in flight)", "; ".join(parts),
              f"not met at {', '.join(moved)} series" if moved else "met")
    return [first, second]


def _label(m: dict[str, Any]) -> str:
    return "idle" if m["condition"] == "idle" else "cycle in flight"


def _memory(rows: list[Row], memory: list[dict[str, Any]]) -> Verdict:
    target = f"memory under {MEMORY_MB:g} MB at 5,000 users"
    parts, worst = [], 0.0
    ours = max(_ours(rows), key=lambda r: r.job.users, default=None)
    if ours is not None and ours.rss is not None and ours.peak_rss is not None:
        parts.append(f"{ours.job.users:,} users, real limits (the Bitrix24 run): RSS {ours.rss:.1f} MB after the "
                     f"cycle, render and a scrape (peak {ours.peak_rss:.1f})")
        worst = ours.rss
    if memory:
        largest = max(memory, key=lambda m: m["users"])
        parts.append(f"{largest['users']:,} users, cycles back to back at 0 ms: {largest['warm_mb']:.1f} MB after "
                     f"warm-up, up to {largest['peak_mb']:.1f} MB over {largest['cycles']:,} cycles")
        worst = max(worst, largest["warm_mb"], largest["peak_mb"])
    if not parts:
        return (target, "not run", "not evaluated")
    return (target, "; ".join(parts), "met" if worst < MEMORY_MB else "not met")


# --- issue 14 -------------------------------------------------------------------------------------


def _steady_rows(rows: Sequence[Row]) -> dict[int, Row]:
    """Back-to-back runs of ours by size: their cycles after the first are the pipelined steady state."""
    return {r.job.users: r for r in rows if r.job.client == "ours" and r.measured and r.job.cycles > 1}


def _steady_small(rows: list[Row]) -> Verdict:
    trips, extra = SMALL_LIMIT
    limit = trips * LATENCY + extra
    target = f"100 users: steady-state cycle <= {trips:g} round trips + {extra * 1000:.0f} ms ({limit * 1000:.0f} ms)"
    run = _steady_rows(rows).get(100)
    if run is None or len(run.walls) < 2:
        return (target, "not run", "not evaluated")
    steady = max(run.walls[1:])
    return (target, f"first cycle {run.walls[0] * 1000:.0f} ms, steady state {steady * 1000:.0f} ms "
            f"({steady / LATENCY:.2f} round trips)", "met" if steady <= limit else "not met")


def _faster_everywhere(rows: list[Row]) -> Verdict:
    """Ours (at 100 users the steady-state cycle, above it the first cycle) against every fast-bitrix24 run."""
    steady = _steady_rows(rows)
    parts, slower = [], []
    for r in _ours(rows):
        small = steady.get(r.job.users) if r.job.users <= 100 else None
        wall = max(small.walls[1:]) if small is not None and len(small.walls) > 1 else r.wall or 0.0
        label = "steady state" if small is not None else "first cycle"
        seen = []
        for f in rows:
            if f.job.client not in FAST or f.job.users != r.job.users or f.status in ("not installed",
                                                                                        "computed, not run"):
                continue
            if f.measured and f.complete and f.wall is not None:
                seen.append(f"{f.job.client} {f.wall:.2f} s")
                if wall >= f.wall:
                    slower.append(f"{r.job.users:,} ({f.job.client})")
            else:
                seen.append(f"{f.job.client} did not finish")
        if seen:
            parts.append(f"{r.job.users:,} users: ours {wall:.2f} s ({label}) vs " + ", ".join(seen))
    if not parts:
        return ("faster than fast-bitrix24 at every size", "not run", "not evaluated")
    return ("faster than fast-bitrix24 at every size", "; ".join(parts),
            f"not met at {', '.join(slower)}" if slower else "met")


def _large_bound(rows: list[Row]) -> Verdict:
    target = f"1,000 and 5,000 users: cycle <= {LARGE_RATIO}x the bound, zero rate-limit answers"
    large = [r for r in _ours(rows, single=False) if r.job.users >= 1000]
    if not large:
        return (target, "not run", "not evaluated")
    parts, missed = [], []
    for r in large:
        ratio = (r.wall or 0.0) / r.bound
        cycles = f" x {r.job.cycles} cycles" if r.job.cycles > 1 else ""
        parts.append(f"{r.job.users:,}{cycles}: {ratio:.2f}x, {r.rejected} rate-limit answers")
        if ratio > LARGE_RATIO or r.rejected:
            missed.append(f"{r.job.users:,}{cycles}")
    return (target, "; ".join(parts), f"not met at {', '.join(missed)}" if missed else "met")


def _portals(r: dict[str, Any] | None) -> list[Verdict]:
    if r is None:
        return []
    scale = f"{r['portals']} portals x {r['users']:,} users"
    share = r["cpu_s"] / r["window_s"]
    rss = max(r["rss_max"], r["rss_end"])
    return [
        (f"{scale}: RSS < {PORTALS_RSS_MB:g} MB", f"{rss:.1f} MB (peak {r['peak_rss']:.1f})",
         "met" if rss < PORTALS_RSS_MB else "not met"),
        (f"{scale}: < {PORTALS_CPU:.0%} of one core at a {r['interval']:g} s interval",
         f"{share:.1%} ({share * 60:.2f} CPU s per minute over {r['window_s']:.0f} s)",
         "met" if share < PORTALS_CPU else "not met"),
        (f"{scale}: /metrics median < {PORTALS_MEDIAN_MS:g} ms and p99 < {PORTALS_P99_MS:g} ms while cycles run",
         f"median {r['median_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms at {r['series']:,} series, "
         f"{r['scrape_cycles']} cycles meanwhile",
         "met" if r["median_ms"] < PORTALS_MEDIAN_MS and r["p99_ms"] < PORTALS_P99_MS else "not met"),
        (f"{scale}: every portal within {PORTALS_RATIO}x its own bound",
         f"steady state: worst {r['steady_worst']:.2f}x, median {r['steady_median']:.2f}x "
         f"({r['steady_cycles']} cycles, {r['steady_within']} within); each portal's median: worst "
         f"{r['portal_median_worst']:.2f}x, {r['portals_within']} of {r['portals_measured']} within; "
         f"first cycles (all at once): worst {r['first_worst']:.1f}x",
         "met" if r["steady_worst"] <= PORTALS_RATIO else "not met"),
    ]
