"""How fast a real Prometheus answers the dashboard's queries about a 5,000-person company (issue 12).

    python bench/dashboard_query.py            # 5,000 users, about 5 minutes; prints a Markdown section
    python bench/dashboard_query.py --record   # the same, and writes that section into bench/RESULTS.md
    python bench/dashboard_query.py --quick    # 100 users, a few runs: the smoke test (its numbers mean nothing)

One process serves both simulators: a Bitrix24 portal of `users` employees with its company structure
(a team per dozen employees past the first hundred) and workgroups, and a Pachca workspace whose users are
the same people (matched by e-mail). Another runs the whole exporter against them with `groups: auto` and
a `people` section. Debian's Prometheus scrapes it and evaluates the rule files prometheus/prometheus.yml lists:
the recording rules (prometheus/rules.yml, whose series the heaviest panels read) and the alerts. Once
Prometheus holds a few scrapes of the full data and the recording rules have run on it, every query of every
panel of grafana/tasks-exporter.json goes to Prometheus' HTTP API the way Grafana sends it (instant or range,
variables at their defaults), round-robin over the queries and over several evaluation times, and the wall
time of each answer is recorded. The recording rules' own cost is reported beside it: their evaluation time
as Prometheus reports it, and their expressions timed as queries.

Neither the simulators nor the exporter's client bucket limit the request rate: a 5,000-user cycle at the
portal's real 2 req/s takes about 4 minutes (bench/RESULTS.md, the Bitrix24 table), and what is measured
here is the cost of the queries, which depends on the series stored, not on how fast they were collected.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import httpx
import yaml
from procs import BenchError, child, next_message, run_child
from prometheus_log import prometheus_port
from report import machine, number, table
from scrape import percentile

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
CONFIG = ROOT / "prometheus" / "prometheus.yml"
BEGIN, END = "<!-- dashboard_query.py: begin -->", "<!-- dashboard_query.py: end -->"
TARGET_MS = 200.0
TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    users: int
    workgroups: int  # readable workgroups and projects (the simulator adds its four special ones)
    reminders: int
    scrape_interval: int  # seconds; FULL keeps prometheus/prometheus.yml's 30 s (scrape and rule evaluation)
    scrapes: int  # full scrapes stored before the timing starts
    runs: int  # timed answers per query
    evaluations: int  # distinct evaluation times the runs cycle through (one per scrape, newest first)
    quick: bool = False


FULL = Plan(users=5000, workgroups=60, reminders=20000, scrape_interval=30, scrapes=5, runs=100, evaluations=5)
QUICK = Plan(users=100, workgroups=4, reminders=500, scrape_interval=1, scrapes=3, runs=3, evaluations=2, quick=True)


def progress(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --- the simulators and the exporter, each in a process of its own ---------------------------------


def simulators_main(conn: Connection, plan: Plan) -> None:
    run_child(conn, _simulators(conn, plan))


async def _simulators(conn: Connection, plan: Plan) -> None:
    from exporter.simulator import bitrix24 as b24sim
    from exporter.simulator import pachca as pachcasim
    from exporter.simulator import serve

    portal = b24sim.generate_portal(plan.users, groups=plan.workgroups, hidden=0, latency=0.0, rate_limited=False)
    workspace = pachcasim.generate_workspace(plan.reminders, users=plan.users)  # the portal's people
    workspace.latency, workspace.rate_limit = 0.0, None
    async with serve(b24sim.create_app(portal)) as b24_url, serve(pachcasim.create_app(workspace)) as p_url:
        conn.send({"webhook": f"{b24_url}{portal.webhook_path}", "base_url": f"{p_url}{pachcasim.PREFIX}",
                   "token": workspace.token, "departments": len(portal.departments),
                   "workgroups": len(portal.workgroups)})
        while await next_message(conn) != "stop":
            pass


def exporter_main(conn: Connection, endpoints: dict[str, Any]) -> None:
    run_child(conn, _exporter(conn, endpoints))


async def _exporter(conn: Connection, endpoints: dict[str, Any]) -> None:
    from exporter.app import running
    from exporter.config import (
        Bitrix24Config,
        Config,
        PachcaConfig,
        PeopleConfig,
        PeoplePair,
        RateLimit,
        Secret,
    )

    hour = 3600.0  # one cycle of each source, then the same snapshot for every scrape: queries see fixed data
    config = Config(
        bitrix24=(Bitrix24Config(name="bench", webhook_url=Secret(endpoints["webhook"]), groups=None,
                                 interval=hour, rate_limit=RateLimit(requests_per_second=1e6, burst=1_000_000)),),
        pachca=(PachcaConfig(name="bench", token=Secret(endpoints["token"]), base_url=endpoints["base_url"],
                             interval=hour),),
        people=PeopleConfig(match="email", pairs=(PeoplePair("bench", "bench"),)),
    )
    async with running(config) as exporter:
        conn.send({"url": exporter.url})
        while await next_message(conn) != "stop":
            pass


# --- Prometheus -----------------------------------------------------------------------------------


class Prometheus:
    """Debian's prometheus binary on a free loopback port, configured as prometheus/prometheus.yml (the shipped
    scrape job and alert rules) but scraping `target` every `scrape_interval` seconds."""

    def __init__(self, binary: str, target: str, scrape_interval: int, workdir: Path) -> None:
        config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
        every = f"{scrape_interval}s"
        config["global"].update(scrape_interval=every, evaluation_interval=every)
        config["rule_files"] = [str(ROOT / "prometheus" / name) for name in config["rule_files"]]
        (job,) = config["scrape_configs"]
        job.update(scrape_interval=every, static_configs=[{"targets": [target]}])
        job["scrape_timeout"] = min(job["scrape_timeout"], every, key=lambda d: int(d.removesuffix("s")))
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log = workdir / "prometheus.log"
        # port 0: Prometheus binds a free port itself and names it in its log (a port chosen here could be
        # taken by another process before Prometheus binds it)
        self.process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             "--web.listen-address=127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"))
        try:
            self.api = f"http://127.0.0.1:{self._port(timeout=60.0)}/api/v1"
        except BenchError:
            self.process.kill()
            self.process.wait()
            raise
        self.client = httpx.Client(timeout=60.0)

    def _port(self, timeout: float) -> int:
        """The port of Prometheus' `msg="Listening on" address=127.0.0.1:PORT` log line."""
        port = self._until(lambda: prometheus_port(self.log.read_text(encoding="utf-8", errors="replace")),
                           lambda port: port is not None, timeout, 0.1,
                           lambda _: f"prometheus did not say where it listens within {timeout:g} s")
        assert port is not None
        return port

    def _until(self, read: Callable[[], T], done: Callable[[T], bool], timeout: float, step: float,
               stuck: Callable[[T], str]) -> T:
        """`read()` every `step` seconds until `done` with what it read; a BenchError (`stuck` of the last
        reading) after `timeout`, or with Prometheus' log as soon as it exits."""
        deadline = time.monotonic() + timeout
        while not done(value := read()):
            if self.process.poll() is not None:
                raise BenchError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise BenchError(stuck(value))
            time.sleep(step)
        return value

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when it returns nothing (or Prometheus is not up yet)."""
        try:
            result = self.client.get(f"{self.api}/query", params={"query": expr}).json()["data"]["result"]
        except (httpx.TransportError, ValueError, KeyError):
            return None
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, at_least: float, timeout: float) -> float:
        value = self._until(lambda: self.value(expr), lambda value: value is not None and value >= at_least,
                            timeout, 0.5, lambda value: f"{expr} stayed at {value} (< {at_least}) for {timeout:g} s")
        assert value is not None
        return value

    def labels(self, expr: str, label: str) -> list[str]:
        result = self.client.get(f"{self.api}/query", params={"query": expr}).json()["data"]["result"]
        return sorted(series["metric"][label] for series in result)

    def cpu_seconds(self) -> float:
        """User + system CPU time Prometheus has used so far (/proc/PID/stat, in clock ticks)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15 of stat(5)

    def timed(self, expr: str, instant: bool, at: float, span: float, step: int) -> tuple[float, int]:
        """(wall seconds, series) of one query as Grafana sends it: instant at `at`, or the `span` up to `at`."""
        if instant:
            path, params = "query", {"query": expr, "time": f"{at:.3f}"}
        else:
            path, params = "query_range", {"query": expr, "start": f"{at - span:.3f}", "end": f"{at:.3f}",
                                           "step": step}
        began = time.perf_counter()
        response = self.client.get(f"{self.api}/{path}", params=params)
        wall = time.perf_counter() - began
        body = response.json()
        if body.get("status") != "success":
            raise BenchError(f"{expr}: {body}")
        return wall, len(body["data"]["result"])

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the panels' queries --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PanelQuery:
    title: str
    ref: str
    expr: str  # as Grafana sends it: variables at their defaults, $__rate_interval 4 scrape intervals
    instant: bool


def dashboard_generator() -> ModuleType:
    """grafana/dashboard.py (it holds the variable substitution Grafana does); needs the dashboard extra."""
    spec = importlib.util.spec_from_file_location("tasks_exporter_dashboard", ROOT / "grafana" / "dashboard.py")
    if spec is None or spec.loader is None:
        raise BenchError("grafana/dashboard.py not found")
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Prefer using dashboardv2", DeprecationWarning)
        spec.loader.exec_module(module)
    return module


def panel_queries(values: dict[str, str], rate_interval: str) -> list[PanelQuery]:
    generator = dashboard_generator()
    board = json.loads((ROOT / "grafana" / "tasks-exporter.json").read_text(encoding="utf-8"))
    instant = {(inner["title"], t["refId"]): bool(t.get("instant"))
               for panel in board["panels"] for inner in [panel, *panel.get("panels", [])]
               for t in inner.get("targets", [])}
    return [PanelQuery(title, ref, generator.concrete(expr, values, rate_interval=rate_interval),
                       instant[(title, ref)])
            for title, ref, expr in generator.panel_queries(board)]


@dataclass(frozen=True, slots=True)
class RecordingRule:
    record: str
    expr: str


def recording_rules() -> list[RecordingRule]:
    """The recording rules of the rule files prometheus/prometheus.yml loads."""
    files = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["rule_files"]
    groups = [group for name in files
              for group in yaml.safe_load((CONFIG.parent / name).read_text(encoding="utf-8"))["groups"]]
    return [RecordingRule(rule["record"], rule["expr"]) for group in groups for rule in group["rules"]
            if "record" in rule]


# What merely selecting series costs on this Prometheus: the floor under every panel query.
REFERENCE = (('bitrix24_tasks{group_id="0", role="all"}', 'count(bitrix24_tasks{group_id="0", role="all"})'),
             ("bitrix24_user_department", "count(bitrix24_user_department)"),
             ('bitrix24_tasks{group_id="0"}', 'count(bitrix24_tasks{group_id="0"})'),
             ("bitrix24_tasks", "count(bitrix24_tasks)"))


# --- the run --------------------------------------------------------------------------------------


def measure(plan: Plan) -> dict[str, Any]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise BenchError("prometheus is not installed (Debian's prometheus package; `make system-deps`)")
    progress(f"simulators: {plan.users:,} users, {plan.workgroups} workgroups, {plan.reminders:,} reminders")
    with child("simulators", simulators_main, plan, ready_timeout=600.0) as sims, \
            child("exporter", exporter_main, sims.ready, ready_timeout=120.0) as exporter, \
            tempfile.TemporaryDirectory(prefix="dashboard-bench-") as workdir:
        prometheus = Prometheus(binary, exporter.ready["url"].removeprefix("http://"), plan.scrape_interval,
                                Path(workdir))
        try:
            return _run(plan, prometheus)
        finally:
            prometheus.stop()


def _run(plan: Plan, prometheus: Prometheus) -> dict[str, Any]:
    progress("waiting for the first full scrape (one exporter cycle of each source)")
    wait = 900.0
    prometheus.wait_for('count(bitrix24_tasks{group_id="0"})', plan.users * 10, wait)
    prometheus.wait_for("count(tasks_exporter_person_info)", 1, wait)
    prometheus.wait_for("count(bitrix24_group_member)", 1, wait)
    rules = recording_rules()
    progress(f"waiting for {len(rules)} recording rules to run on it")
    for rule in rules:  # as many series recorded as the expression yields now: the rule ran on the full data
        prometheus.wait_for(f"count({rule.record}) - count({rule.expr})", 0, wait)
    start = time.time()
    progress(f"waiting for {plan.scrapes} scrapes of it")
    prometheus.wait_for("min(count_over_time(tasks_exporter_person_info[1h]))", plan.scrapes,
                        plan.scrapes * plan.scrape_interval * 3 + 60)
    stored = {name: prometheus.value(expr) for name, expr in (
        ("samples per scrape", 'scrape_samples_scraped{job="tasks-exporter"}'),
        ("bitrix24_tasks", "count(bitrix24_tasks)"), ("bitrix24_user_department", "count(bitrix24_user_department)"),
        ("departments", "count(bitrix24_department_info)"), ("workgroups", "count(bitrix24_group_info)"),
        ("group members", "count(bitrix24_group_member)"), ("pachca users", "count(pachca_user_info)"),
        ("pachca tags", "count(pachca_user_tag)"), ("people matched", "count(tasks_exporter_person_info)"))}
    # The top department (the whole company) is the heaviest choice of the department variable.
    top = prometheus.labels('bitrix24_department_info{parent_id=""}', "department_id")
    queries = panel_queries({"department": "|".join(top)}, rate_interval=f"{4 * plan.scrape_interval}s")
    references = [PanelQuery(name, "-", expr, True) for name, expr in REFERENCE]
    rule_queries = [PanelQuery(rule.record, "-", rule.expr, True) for rule in rules]
    now = time.time()
    times = [now - k * plan.scrape_interval for k in range(plan.evaluations)]
    span = plan.scrapes * plan.scrape_interval  # of a range query: the last `scrapes` scrapes before its end
    progress(f"timing {len(queries)} queries x {plan.runs} runs")
    timed = [*queries, *references, *rule_queries]
    walls: list[list[float]] = [[] for _ in timed]
    cpu = [0.0] * len(timed)
    series = [0] * len(timed)
    load = [os.getloadavg()[0]]
    evaluations: dict[Evaluation, float] = {}
    for run in range(plan.runs):
        _rule_evaluations(prometheus, evaluations)
        at = times[run % len(times)]
        for i, q in enumerate(timed):
            before = prometheus.cpu_seconds()
            wall, found = prometheus.timed(q.expr, q.instant, at, span, plan.scrape_interval)
            cpu[i] += prometheus.cpu_seconds() - before
            walls[i].append(wall)
            series[i] = max(series[i], found)
    cpu_ms = [total * 1000 / plan.runs for total in cpu]
    load.append(os.getloadavg()[0])
    selected = [prometheus.value(q.expr) or 0.0 for q in references]
    recorded = [prometheus.value(f"count({rule.record})") or 0.0 for rule in rules]
    ends = len(queries), len(queries) + len(references)
    return {"plan": plan, "panels": list(zip(queries, walls, series, cpu_ms, strict=False)),
            "references": list(zip(references, walls[ends[0]:ends[1]], selected, cpu_ms[ends[0]:ends[1]],
                                   strict=True)),
            "rule_queries": list(zip(rule_queries, walls[ends[1]:], recorded, cpu_ms[ends[1]:], strict=True)),
            "stored": stored, "window_s": now - start, "span_s": span, "rules": _rule_times(evaluations, "rule"),
            "groups": _rule_times(evaluations, "group"), "top": top, "load": load}


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One evaluation of a rule or a rule group, as /api/v1/rules reports it."""

    level: str  # "group" or "rule"
    name: str
    kind: str  # "recording" or "alerting" (a group: "alerting" if any of its rules is)
    when: str  # lastEvaluation


def _rule_evaluations(prometheus: Prometheus, seen: dict[Evaluation, float]) -> None:
    """Add the last evaluation of each rule group and each rule -> seconds, as Prometheus reports it (the same
    figure as prometheus_rule_group_last_duration_seconds for a group), to `seen`."""
    groups = prometheus.client.get(f"{prometheus.api}/rules").json()["data"]["groups"]
    for group in groups:
        kinds = {rule["type"] for rule in group["rules"]}
        kind = "alerting" if "alerting" in kinds else "recording"
        seen[Evaluation("group", group["name"], kind, group["lastEvaluation"])] = float(group["evaluationTime"])
        for rule in group["rules"]:
            seen[Evaluation("rule", rule["name"], rule["type"], rule["lastEvaluation"])] = float(rule["evaluationTime"])


def _rule_times(seen: dict[Evaluation, float], level: str) -> list[tuple[str, str, list[float]]]:
    """(name, kind, evaluation times in seconds) of each rule or group seen during the timing, slowest first."""
    by_name: dict[tuple[str, str], list[float]] = {}
    for evaluation, seconds in seen.items():
        if evaluation.level == level and evaluation.when != "0001-01-01T00:00:00Z":  # not evaluated yet
            by_name.setdefault((evaluation.name, evaluation.kind), []).append(seconds)
    return sorted(((name, kind, times) for (name, kind), times in by_name.items()),
                  key=lambda item: -percentile(item[2], 0.5))


# --- the report -----------------------------------------------------------------------------------


def report(result: dict[str, Any], command: str) -> str:
    plan: Plan = result["plan"]
    panels = sorted(result["panels"], key=lambda p: -percentile(p[1], 0.5))
    rows = [[q.title, q.ref, "instant" if q.instant else "range", number(found), *_ms(walls), f"{cpu:.0f}"]
            for q, walls, found, cpu in panels]
    heaviest, walls, _, _ = panels[0]
    median, p99 = percentile(walls, 0.5) * 1000, percentile(walls, 0.99) * 1000
    verdict = "met" if p99 < TARGET_MS else "met by the median, not by the p99" if median < TARGET_MS else "not met"
    references = [[name.title, number(selected), *_ms(walls), f"{cpu:.0f}", f"{cpu * 1000 / max(selected, 1):.1f}"]
                  for name, walls, selected, cpu in result["references"]]
    stored = ", ".join(f"{name} {number(value)}" for name, value in result["stored"].items() if value is not None)
    version = subprocess.run([shutil.which("prometheus") or "prometheus", "--version"], capture_output=True,
                             text=True, check=False).stdout.splitlines()[:1]
    every = f"{plan.scrape_interval} s"
    return "\n".join([
        f"# Issue 12: the dashboard's queries on a real Prometheus, {plan.users:,} users", "",
        machine(), f"prometheus: {' '.join(version)}", f"command: {command}", "",
        f"Stored: {stored}. The exporter ran `groups: auto` with a `people` section against a {plan.users:,}-user "
        f"portal ({plan.workgroups} readable workgroups) and a workspace of the same people ({plan.reminders:,} "
        f"reminders). Prometheus ran prometheus/prometheus.yml (the shipped job, recording rules and alert rules), "
        f"scraping and evaluating every {every}; before the timing began it held {plan.scrapes}+ scrapes "
        f"({result['window_s']:.0f} s of data) and the recording rules had run on the full data.", "",
        f"**Heaviest panel query: {heaviest.title} [{heaviest.ref}], median {median:.1f} ms, p99 {p99:.1f} ms; "
        f"target under {TARGET_MS:.0f} ms: {verdict}.**", "",
        table("Panel queries, heaviest first",
              ["panel", "ref", "query", "series", "median ms", "p99 ms", "max ms", "Prometheus CPU ms"], rows,
              [f"{plan.runs} answers per query over HTTP (keep-alive), round-robin over all queries, evaluated at "
               f"the {plan.evaluations} newest scrape times in turn; wall time from sending the request to the "
               "parsed JSON answer",
               "variables at the dashboard's defaults (All; role all; workgroup All = group 0) except the "
               f"department: the top one (id {', '.join(result['top'])}, the whole company), its heaviest choice; "
               f"$__rate_interval = {4 * plan.scrape_interval}s; range queries span {result['span_s']} s at a {every} "
               "step (a 6-hour range costs more on those panels; none of the organisation panels is a range "
               "query)",
               "Prometheus CPU: its user + system time (/proc/PID/stat) over each answer, the mean over the "
               "runs; it does not depend on what else the machine runs, but includes whatever scrape or rule "
               f"evaluation Prometheus did meanwhile (every {every})",
               "rate limits off in both simulators and in the exporter's client bucket, and one cycle of each "
               "source: this measures the queries, not the collection (at the real 2 req/s a 5,000-user cycle "
               "takes ~4 minutes, see the Bitrix24 table)",
               "Prometheus shares the machine's cores with the exporter and simulator processes (idle after "
               "their cycle) and with whatever else runs there: the 1-minute load average was "
               f"{result['load'][0]:.1f} when the timing began and {result['load'][1]:.1f} when it ended; the wall "
               "times grow with it, the CPU column hardly"]),
        table("What selecting series costs on this Prometheus (the floor under the panel queries)",
              ["selector", "series", "median ms", "p99 ms", "max ms", "Prometheus CPU ms", "CPU µs per series"],
              references,
              ["count(selector), timed in the same round-robin as the panel queries"]),
        table("Recording rules: what one evaluation costs, timed as a query",
              ["rule", "series recorded", "median ms", "p99 ms", "max ms", "Prometheus CPU ms"],
              [[q.title, number(recorded), *_ms(walls), f"{cpu:.0f}"]
               for q, walls, recorded, cpu in result["rule_queries"]],
              ["each rule's expression sent as an instant query, in the same round-robin as the panel queries: "
               f"Prometheus pays about this at every evaluation (every {every}) instead of at every dashboard "
               "refresh and alert evaluation that needs the figures"]),
        table("Rule groups: evaluation time as Prometheus reports it",
              ["group", "kind", "evaluations", "median ms", "max ms", "median per minute ms"],
              [[name, kind, str(len(times)), *_evaluation_ms(times),
                f"{percentile(times, 0.5) * 1000 * 60 / plan.scrape_interval:.0f}"]
               for name, kind, times in result["groups"]],
              [f"every evaluation (every {every}) during the timing, read from /api/v1/rules (a group's "
               "evaluationTime, the figure prometheus_rule_group_last_duration_seconds exports); wall time, so it "
               "grows with the machine's load, and the groups ran while the panel queries were being sent back to "
               "back, so they competed with them for Prometheus' CPU",
               "per minute: the median times the evaluations a minute holds, what the group costs Prometheus "
               "whether anyone looks at the dashboard or not"]),
        table("Rules: evaluation time as Prometheus reports it", ["rule", "kind", "evaluations", "median ms", "max ms"],
              [[name, kind, str(len(times)), *_evaluation_ms(times)] for name, kind, times in result["rules"]],
              [f"every evaluation (every {every}) during the timing, read from /api/v1/rules"])])


def _evaluation_ms(times: list[float]) -> list[str]:
    return [f"{percentile(times, 0.5) * 1000:.1f}", f"{max(times) * 1000:.1f}"]


def _ms(walls: list[float]) -> list[str]:
    return [f"{percentile(walls, q) * 1000:.1f}" for q in (0.5, 0.99)] + [f"{max(walls) * 1000:.1f}"]


def record(section: str) -> None:
    """Put `section` between the markers in bench/RESULTS.md (appended the first time)."""
    text = RESULTS.read_text(encoding="utf-8")
    block = f"{BEGIN}\n{section.rstrip()}\n{END}\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 users and a few runs (the smoke test)")
    parser.add_argument("--record", action="store_true", help="also write the section into bench/RESULTS.md")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    result = measure(plan)
    command = "python bench/dashboard_query.py" + (" --quick" if args.quick else "")
    section = report(result, command)
    print(section, flush=True)
    if args.record:
        record(section)
    progress(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
