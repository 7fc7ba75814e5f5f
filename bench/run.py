"""Benchmarks of tasks-exporter (issue 6), measured in one run against the simulators on 127.0.0.1.

    python bench/run.py           # everything, about 20 minutes (the 5,000-user cycle alone takes ~4)
    python bench/run.py --only portals   # one part (bitrix24, memory, pachca, metrics, portals)
    python bench/run.py --quick   # small sizes only, under a minute (the smoke test runs this)

Each simulator and each measured process runs in a process of its own (see procs.py); results go to
stdout as Markdown tables, progress to stderr. bench/RESULTS.md holds a full run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Any

from bitrix24_bench import Row, bitrix24_rows, bitrix24_table
from clients import WorkspaceRun, pachca_main
from memory import MemoryRun, memory_main
from portals import ManyRun, PortalsSpec, many_main, portals_main
from procs import Child, PortalSpec, WorkspaceSpec, child, portal_main, workspace_main
from report import TITLE, machine, number, seconds, table
from scrape import ScrapeLoad, exporter_main, percentile, scraper_main
from targets import PORTALS_RATIO, targets_table

LATENCY = 0.05  # seconds per API call, both simulators
SCRAPERS = 10
SIMULATOR_PROCESSES = 2  # the many-portals run: portals are spread over this many simulator processes
PARTS = ("bitrix24", "memory", "pachca", "metrics", "portals")


@dataclass(frozen=True, slots=True)
class Plan:
    quick: bool
    users: tuple[int, ...]  # Bitrix24 portal sizes
    naive_run: tuple[int, ...]  # sizes the naive client really runs (the rest are computed)
    fast_run: tuple[int, ...]  # sizes fast-bitrix24 really runs (with its defaults, and in slow mode)
    # (users, cycles) run back to back: the bucket never drains between cycles; from the second cycle on the
    # exporter's cycle is pipelined (the steady state)
    steady: tuple[tuple[int, int], ...]
    reminders: tuple[int, ...]
    series: tuple[int, ...]
    scrapes: int  # per window (1 or 10 scrapers)
    scrape_budget_s: float
    live_users: int  # portal of the cycle in flight during scrapes (500 ms latency)
    memory: tuple[tuple[int, int], ...]  # (users, cycles)
    portals: tuple[int, int]  # (portals, users each) in one exporter process
    portals_interval: float
    portals_window_s: float  # CPU and RSS are measured over this much steady operation


FULL = Plan(quick=False, users=(100, 1000, 5000), naive_run=(100,), fast_run=(100, 1000, 5000),
            steady=((100, 2), (1000, 3)),
            reminders=(1000, 20000), series=(25000, 100000), scrapes=10000, scrape_budget_s=30.0,
            live_users=1000, memory=((1000, 1000), (5000, 13)), portals=(100, 100), portals_interval=60.0,
            portals_window_s=180.0)
QUICK = Plan(quick=True, users=(10, 100), naive_run=(10,), fast_run=(10, 100), steady=((100, 2),),
             reminders=(1000,), series=(2500,), scrapes=300, scrape_budget_s=3.0, live_users=100,
             memory=((100, 23),), portals=(5, 20), portals_interval=2.0, portals_window_s=3.0)


def progress(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")  # one write: threads report too
    sys.stderr.flush()


def emit(text: str) -> None:
    print(text, flush=True)


# --- Pachca ---------------------------------------------------------------------------------------


def pachca_section(plan: Plan) -> list[dict[str, float]]:
    results = []
    for n in plan.reminders:
        progress(f"pachca: {n:,} reminders")
        timed = _pachca_cycle(WorkspaceSpec(n, latency=LATENCY), trace=False)
        traced = _pachca_cycle(WorkspaceSpec(n, latency=0.0, rate_limit=None), trace=True)
        results.append({"reminders": n, **timed, "peak_mb": traced["peak_mb"]})
    rows = [[number(r["reminders"]), number(r["pages"]), number(r["calls"]), seconds(r["wall"]),
             seconds(r["calls"] * LATENCY), f"{r['wall'] / (r['calls'] * LATENCY):.2f}", number(r["rejected"]),
             f"{r['peak_mb']:.2f}"] for r in results]
    emit(table("Pachca cycle (GET /tasks cursor walk + GET /users; 50 ms per call, 50 req/s limit)",
               ["reminders", "pages /tasks", "HTTP calls", "wall s", "calls x latency s", "wall / (calls x lat)",
                "429 answers", "tracemalloc peak MB"], rows,
               ["pages are sequential (each cursor comes from the previous page), so calls x latency is the bound",
                "peak memory: tracemalloc peak during the cycle, in a separate run at 0 ms latency (tracemalloc "
                "slows Python down, so it is kept out of the timed run)"]))
    return results


def _pachca_cycle(spec: WorkspaceSpec, trace: bool) -> dict[str, float]:
    with child("pachca-sim", workspace_main, spec) as sim:
        run = WorkspaceRun(sim.ready["base_url"], sim.ready["token"], trace)
        with child("pachca-client", pachca_main, run) as client:
            client.send("go")
            result: dict[str, float] = client.receive(300.0)
        return {**result, "rejected": sim.ask("stats")["rejected"]}


# --- /metrics -------------------------------------------------------------------------------------


def metrics_section(plan: Plan) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for series in plan.series:
        progress(f"/metrics: {series:,} series")
        with child("exporter", exporter_main, series, ready_timeout=300.0) as exporter:
            served = _served_series(exporter.ready["url"])
            load = ScrapeLoad(exporter.ready["url"], SCRAPERS, plan.scrape_budget_s)
            with child("scraper", scraper_main, load) as scraper:
                windows = [("idle", 1, _scrape_window(exporter, scraper, 1, plan)),
                           ("idle", SCRAPERS, _scrape_window(exporter, scraper, SCRAPERS, plan))]
                with child("slow-portal", portal_main, PortalSpec(plan.live_users, latency=0.5)) as slow:
                    exporter.ask(("cycle", slow.ready["webhook"]))
                    time.sleep(1.5)  # let the first wave of API calls go out
                    busy = _scrape_window(exporter, scraper, SCRAPERS, plan)
                    windows.append(("busy", SCRAPERS, {**busy, "api_calls": slow.ask("stats")["calls"]}))
        results += [{"series": served, "render_s": exporter.ready["render_s"], "condition": condition,
                     "scrapers": scrapers, **window} for condition, scrapers, window in windows]
    rows = [[number(r["series"]), _condition(r), str(r["scrapers"]), number(r["scrapes"]), f"{r['median_ms']:.2f}",
             f"{r['p99_ms']:.2f}", f"{r['cpu_ms']:.2f}", number(r["body_kb"]), f"{r['render_s'] * 1000:.0f}"]
            for r in results]
    emit(table("/metrics under load (keep-alive scrapers, Accept-Encoding: gzip, from another process)",
               ["series", "meanwhile", "scrapers", "scrapes", "median ms", "p99 ms", "server CPU ms/scrape",
                "body KB", "render ms (once per snapshot)"], rows,
               ["each scraper sends its next request as soon as the previous answer is read (closed loop): with "
                f"{SCRAPERS} scrapers a scrape also waits behind the other {SCRAPERS - 1}",
                "server CPU: getrusage(RUSAGE_SELF) user+sys of the exporter process over the window / scrapes",
                "cycle in flight: a real Bitrix24 source loop in the exporter process, against a "
                f"{plan.live_users:,}-user portal answering in 500 ms (2 req/s, burst 50), for the whole window",
                "render: the snapshot to text + gzip (Exposition.render_now), which the exporter does once per new "
                "snapshot, in a worker thread; scrapes serve those bytes"]))
    return results


def _condition(r: dict[str, Any]) -> str:
    if r["condition"] == "idle":
        return "no API cycle"
    done = int(r["cycles_done"])
    return (f"cycle in flight (500 ms API), {number(r['api_calls'])} API calls so far"
            + (f", {done} cycle(s) finished" if done else ""))


def _served_series(url: str) -> int:
    import httpx

    text = httpx.get(url + "/metrics", timeout=60.0).text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def _scrape_window(exporter: Child, scraper: Child, scrapers: int, plan: Plan) -> dict[str, float]:
    exporter.ask("measure")
    load = scraper.ask(("go", scrapers, plan.scrapes), timeout=plan.scrape_budget_s + 120)
    server = exporter.ask("measured", timeout=60)
    latencies = load["latencies"]
    return {"scrapes": len(latencies), "median_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "cpu_ms": server["cpu_s"] * 1000 / server["scrapes"],
            "body_kb": load["body_bytes"] / 1024, "cycles_done": server["cycles_done"] or 0}


# --- memory ---------------------------------------------------------------------------------------


def memory_runs(runs: tuple[tuple[int, int], ...]) -> list[dict[str, Any]]:
    results = []
    for users, cycles in runs:
        progress(f"memory: {users:,} users, {cycles:,} cycles")
        with child("portal", portal_main, PortalSpec(users, latency=0.0, rate_limited=False)) as portal, \
                child("exporter", memory_main, MemoryRun(portal.ready["webhook"], cycles)) as exporter:
            exporter.send("go")
            result = exporter.receive(1800.0)
        samples = result["samples"]
        first = samples[1] if len(samples) > 1 else samples[0]
        results.append({"users": users, "cycles": result["cycles"], "warm_mb": result["warm_mb"],
                        "end_mb": samples[-1][1], "first_mb": first[1], "first_cycle": first[0],
                        "peak_mb": max(mb for _, mb in samples), "seconds": result["seconds"],
                        "failures": result["failures"]})
    return results


def memory_table(results: list[dict[str, Any]]) -> str:
    rows = [[number(r["users"]), number(r["cycles"]), f"{r['warm_mb']:.1f}", f"{r['end_mb']:.1f}",
             f"{r['peak_mb']:.1f}", f"{r['end_mb'] - r['warm_mb']:+.1f}",
             f"{r['end_mb'] - r['first_mb']:+.1f} (cycle {r['first_cycle']:.0f} to {r['cycles']:.0f})",
             seconds(r["seconds"]), number(r["failures"])] for r in results]
    return table("Resident memory of the whole exporter (exporter.app.running: scheduler, source, store, "
                 "exposition, HTTP server)",
                 ["users", "cycles", "RSS after warm-up MB", "RSS at the end MB", "highest sample MB", "growth MB",
                  "growth after the first sample MB", "seconds", "failed cycles"], rows,
                 ["VmRSS from /proc/self/status; warm-up = 3 cycles and 3 scrapes (gzip and plain); one more "
                  "scrape and an RSS sample every tenth of the remaining cycles",
                  "cycles back to back against a simulator with rate limiting off and 0 ms latency (the client "
                  "bucket opened wide too), so that many cycles fit in minutes; 5 roles, group 0"])


# --- many portals in one process ------------------------------------------------------------------


def portals_section(plan: Plan) -> dict[str, Any]:
    count, users = plan.portals
    progress(f"many portals: {count} x {users:,} users in one exporter, {plan.portals_interval:g} s interval")
    share = -(-count // SIMULATOR_PROCESSES)
    with contextlib.ExitStack() as stack:
        sims = [stack.enter_context(child(f"portals-{k}", portals_main,
                                          PortalsSpec(min(share, count - k * share), users, LATENCY, k * share),
                                          ready_timeout=300.0))
                for k in range(SIMULATOR_PROCESSES) if k * share < count]
        webhooks = tuple(w for sim in sims for w in sim.ready["webhooks"])
        run = ManyRun(webhooks, plan.portals_interval, LATENCY)
        with child("many-exporter", many_main, run, ready_timeout=120.0) as exporter:
            url = exporter.ready["url"]
            first = exporter.ask("first", timeout=900.0)
            progress(f"many portals: first cycles done in {first['seconds']:.1f} s; waiting for every second cycle")
            settled = exporter.ask("steady", timeout=3 * plan.portals_interval + 300.0)
            progress(f"many portals: second cycles done at {settled['seconds']:.1f} s; CPU window "
                     f"{plan.portals_window_s:g} s")
            cpu = exporter.ask(("cpu", plan.portals_window_s), timeout=plan.portals_window_s + 300.0)
            served = _served_series(url)
            with child("scraper", scraper_main, ScrapeLoad(url, SCRAPERS, plan.scrape_budget_s)) as scraper:
                before = exporter.ask("mark")
                load = scraper.ask(("go", SCRAPERS, plan.scrapes), timeout=plan.scrape_budget_s + 120)
                after = exporter.ask("mark")
            cycles = exporter.ask("cycles")
        stats = [sim.ask("stats") for sim in sims]
    steady = [(target, d / b) for target, runs in cycles["cycles"].items() for d, b in runs[1:]]
    firsts = [runs[0][0] / runs[0][1] for runs in cycles["cycles"].values()]
    medians = [percentile([d / b for d, b in runs[1:]], 0.5) for runs in cycles["cycles"].values() if runs[1:]]
    latencies = load["latencies"]
    result = {
        "portals": count, "users": users, "interval": plan.portals_interval, "series": served,
        "first_s": first["seconds"], "first_worst": max(firsts), "steady_s": settled["seconds"],
        "cpu_s": cpu["cpu_s"], "window_s": cpu["seconds"],
        "renders_window": cpu["renders"], "render_s": cpu["render_s"], "render_cpu_s": cpu["render_cpu_s"],
        "rss_max": cpu["rss_max_mb"],
        "rss_end": cycles["rss_mb"],
        "peak_rss": cycles["peak_rss_mb"], "scrapes": len(latencies),
        "median_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
        "scrape_cycles": after["cycles"] - before["cycles"], "scrape_renders": after["renders"] - before["renders"],
        "scrape_s": load.get("seconds", 0.0),
        "steady_cycles": len(steady), "steady_worst": max((r for _, r in steady), default=float("nan")),
        "steady_median": percentile([r for _, r in steady], 0.5) if steady else float("nan"),
        "steady_p90": percentile([r for _, r in steady], 0.9) if steady else float("nan"),
        "steady_within": sum(1 for _, r in steady if r <= PORTALS_RATIO),
        # each portal's own median cycle/bound: the worst of them, and how many are within the target
        "portal_median_worst": max(medians, default=float("nan")),
        "portals_within": sum(1 for m in medians if m <= PORTALS_RATIO), "portals_measured": len(medians),
        "calls": sum(sum(s["calls"]) for s in stats), "rejected": sum(sum(s["rejected"]) for s in stats),
    }
    emit(portals_table(result))
    return result


def _every(r: dict[str, Any]) -> str:
    return f"{r['window_s'] / r['renders_window']:.0f} s" if r["renders_window"] else "-"


def portals_table(r: dict[str, Any]) -> str:
    per_minute = r["cpu_s"] / r["window_s"] * 60
    rows = [
        ["portals x users", f"{r['portals']} x {r['users']:,} (interval {r['interval']:g} s, 50 ms per call)"],
        ["series served", number(r["series"])],
        ["first cycles (all portals at once)", f"{r['first_s']:.1f} s until every portal had one; worst "
                                               f"cycle/bound {r['first_worst']:.1f}x"],
        ["CPU", f"{per_minute:.2f} s per minute = {per_minute / 60 * 100:.1f} % of one core "
                f"(over {r['window_s']:.0f} s from {r['steady_s']:.0f} s on, every portal past its second "
                "cycle; a gzip scrape every 15 s)"],
        ["renders", f"{r['renders_window']} in that window, one every {_every(r)}, "
                    f"{r['render_cpu_s'] / r['window_s'] * 60:.2f} s of CPU per minute; the last took "
                    f"{r['render_s'] * 1000:.0f} ms"],
        ["RSS", f"{r['rss_max']:.1f} MB highest sample in that window; {r['rss_end']:.1f} MB at the end; "
                f"peak {r['peak_rss']:.1f} MB"],
        [f"/metrics, {SCRAPERS} scrapers", f"median {r['median_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms over "
                                           f"{r['scrapes']:,} scrapes; {r['scrape_cycles']} cycles and "
                                           f"{r['scrape_renders']} renders meanwhile"],
        ["steady-state cycle / bound", f"worst {r['steady_worst']:.2f}x, p90 {r['steady_p90']:.2f}x, median "
                                       f"{r['steady_median']:.2f}x over {r['steady_cycles']} cycles; "
                                       f"{r['steady_within']} of them within {PORTALS_RATIO}x"],
        ["each portal's median cycle / bound", f"worst {r['portal_median_worst']:.2f}x; {r['portals_within']} "
                                               f"of {r['portals_measured']} portals within {PORTALS_RATIO}x"],
        ["API calls, rate-limit answers", f"{number(r['calls'])}, {number(r['rejected'])}"],
    ]
    return table("Many portals in one exporter process", ["measure", "value"], rows,
                 [f"portals served by {SIMULATOR_PROCESSES} simulator processes, each portal its own app, port, "
                  "webhook and leaky bucket (2 req/s, burst 50); one exporter process (exporter.app.running, "
                  "default config per portal)",
                  "bound = the leaky-bucket bound + one round trip (50 ms), per portal; steady state = every "
                  "cycle after a portal's first"])


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (< 1 minute); used by the smoke test")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to run, of {', '.join(PARTS)} (default: all)")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    if not parts <= set(PARTS):
        parser.error(f"--only: unknown part(s) {', '.join(sorted(parts - set(PARTS)))}")
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    emit(f"# {TITLE}{' (--quick: small sizes only)' if plan.quick else ''}\n")
    only = "" if parts == set(PARTS) else f" --only {','.join(p for p in PARTS if p in parts)}"
    emit(f"{machine()}\ncommand: python bench/run.py{' --quick' if plan.quick else ''}{only}\n")
    growth, *rest = plan.memory if "memory" in parts else ((0, 0),)
    rows: list[Row] = []
    memory: list[dict[str, Any]] = []
    if "bitrix24" in parts:
        rows, memory = bitrix24_rows(plan.users, plan.naive_run, plan.fast_run, plan.steady, progress,
                                     alongside=lambda: memory_runs((growth,)) if "memory" in parts else [])
        emit(bitrix24_table(rows))
    if "memory" in parts:
        memory = memory if "bitrix24" in parts else memory_runs((growth,))
        memory += memory_runs(tuple(rest))
        emit(memory_table(memory))
    pachca = pachca_section(plan) if "pachca" in parts else []
    metrics = metrics_section(plan) if "metrics" in parts else []
    portals = portals_section(plan) if "portals" in parts else None
    emit(targets_table(rows, metrics, memory, portals, quick=plan.quick))
    progress(f"done in {time.monotonic() - started:.0f} s")
    return 0 if ("pachca" not in parts or pachca) and ("memory" not in parts or memory) else 1

if __name__ == "__main__":
    sys.exit(main())
