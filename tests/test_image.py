"""The container image, built and run for real on a private Docker engine, offline as an air-gapped site would.

The machine has Debian's packages and PyPI but no image registry, so: Debian's dockerd runs with its networking
off and all its state in one temporary directory; the base image is made with debootstrap from the machine's
own Debian mirror and `docker import`ed; the package and its dependencies come from a wheelhouse built here
(`pip wheel`), and `docker build --network none --build-arg INSTALL_FROM=wheels` installs from it alone.
Containers run with `--network host` so the test reaches them on 127.0.0.1.

Skipped (failed under CI) only where the engine cannot start at all: not root, or no dockerd/debootstrap
(`make system-deps` installs them).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn, TypeVar

import httpx
import pytest

from exporter.app import DEFAULT_PORT
from exporter.errors import ConfigError
from exporter.healthcheck import check, healthz_url
from tests.conftest import ROOT, free_port, listening_port

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
IMAGE = "tasks-exporter:test"
BASE_IMAGE = "tasks-exporter-base:bookworm"
# The base: Debian's own Python, as small as debootstrap makes it. Its python3 (3.11) must be the host's minor
# version, since the wheelhouse's binary wheels are built for the host's Python.
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3")
# Left out of the base like Debian's slim images do: package lists and caches, docs, man pages, translations.
BASE_EXCLUDES = ("./dev/*", "./proc/*", "./sys/*", "./var/cache/apt/*", "./var/lib/apt/lists/*", "./var/log/*",
                 "./usr/share/doc/*", "./usr/share/man/*", "./usr/share/info/*", "./usr/share/locale/*")
# debootstrap takes most of this test's time; its output is kept under the repository's gitignored tmp/.
BASE_CACHE = ROOT / "tmp" / "image-base"
# A size budget that catches a compiler, a pip cache or a source tree slipping into the image.
SIZE_BUDGET_MB = 180
COMPILERS = re.compile(r"(?:\w+-linux-gnu-)?(?:gcc|g\+\+|cc|c\+\+|clang|cpp|ld|as|make)(?:-[\d.]+)?")
BIN_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin", "opt/tasks-exporter/bin")
SITE_PACKAGES = "opt/tasks-exporter/lib/python3.11/site-packages/"
T = TypeVar("T")


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `condition` until it returns something truthy, or fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


def report(config: pytest.Config, line: str) -> None:
    """A line in pytest's own output, shown without -s (a figure the run should leave behind)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")  # what capsys.disabled() uses
    if reporter is not None:
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write(f"\ntests/test_image.py: {line}\n")


def unavailable(config: pytest.Config, reason: str) -> NoReturn:
    report(config, f"skipped: {reason}")
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, but CI is set: this machine kind must run the image test")
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------------------
# the engine


class Engine:
    """Debian's dockerd with no networking of its own and everything (data, exec state, socket) in `workdir`."""

    def __init__(self, workdir: Path, dockerd: str, client: str) -> None:
        self.workdir, self.dockerd, self.client = workdir, dockerd, client
        self.socket = workdir / "docker.sock"
        self.log = workdir / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        (workdir / "client").mkdir()
        (workdir / "daemon.json").write_text("{}\n")  # not /etc/docker/daemon.json: nothing of the host's set-up
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(workdir / "client"),
                    "DOCKER_BUILDKIT": "1"}

    def start(self) -> str | None:
        """Start dockerd and wait for its API; None when it answers, else why it cannot start."""
        command = [self.dockerd, "--config-file", str(self.workdir / "daemon.json"),
                   "--data-root", str(self.workdir / "data"), "--exec-root", str(self.workdir / "exec"),
                   "--pidfile", str(self.workdir / "dockerd.pid"), "--host", f"unix://{self.socket}",
                   "--bridge=none", "--iptables=false", "--ip6tables=false",
                   # apart from any other engine should it share a system containerd
                   "--containerd-namespace", "tasks-exporter-test",
                   "--containerd-plugins-namespace", "tasks-exporter-test-plugins"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=_terminate_with_parent)
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                return True
            return self.docker("version", check=False, timeout=10).returncode == 0

        try:
            wait_until(answers, 60, "dockerd answering on its socket")
        except AssertionError as exc:
            return f"{exc}; {self.log_tail()}"
        if process.poll() is not None:
            return f"dockerd exited with {process.returncode}: {self.log_tail()}"
        return None

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.client, *args], capture_output=True, text=True, env=self.env,
                                timeout=timeout, check=False, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}")
        return result

    def inspect(self, kind: str, name: str) -> Any:
        return json.loads(self.docker(kind, "inspect", name).stdout)[0]

    def close(self) -> None:
        """Stop dockerd (it stops its containerd), then anything of it left running, its mounts, its directory."""
        if self.process is not None and self.process.poll() is None:
            for container in self.docker("ps", "--all", "--quiet", check=False, timeout=30).stdout.split():
                self.docker("rm", "--force", container, check=False, timeout=60)
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        for pid in self.leftover_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for mount in self.mounts():
            subprocess.run(["umount", "--lazy", mount], capture_output=True, check=False, timeout=30)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def leftover_processes(self) -> list[int]:
        """containerd and its shims, should dockerd have died without stopping them: their command lines name
        `workdir`."""
        marker = str(self.workdir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if marker in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
        return pids

    def mounts(self) -> list[str]:
        """Mount points under `workdir` (overlays, a debootstrap's /proc), deepest first."""
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == str(self.workdir) or point.startswith(f"{self.workdir}/"):
                points.append(point)
        return sorted(points, key=len, reverse=True)


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when pytest dies, so an aborted run (killed, not failed: no teardown)
    leaves no engine running (Linux prctl PR_SET_PDEATHSIG; dockerd then stops its containerd itself)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def docker_client(dockerd: str) -> str | None:
    """The client of dockerd's own package (/usr/sbin/dockerd -> /usr/bin/docker), else the one on PATH: a
    newer client may lack the buildx plugin its `docker build` wants."""
    return shutil.which("docker", path=str(Path(dockerd).parent.parent / "bin")) or shutil.which("docker")


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    dockerd = shutil.which("dockerd")
    client = docker_client(dockerd) if dockerd else None
    if os.geteuid() != 0:
        unavailable(request.config, "dockerd needs root here (no rootless set-up)")
    if not dockerd or not client or not shutil.which("debootstrap"):
        unavailable(request.config, "no dockerd, docker or debootstrap: make system-deps installs docker.io and "
                                    "debootstrap (apt-get)")
    engine = Engine(Path(tempfile.mkdtemp(prefix="tasks-exporter-image-")), dockerd, client)
    try:
        problem = engine.start()
        if problem:
            unavailable(request.config, f"the Docker engine cannot start: {problem}")
        yield engine
    finally:
        engine.close()


# ---------------------------------------------------------------------------------------------------------
# the base image and the offline build


def debian_mirror() -> str | None:
    """The Debian archive the machine's apt uses (one-line or deb822 sources), or None for debootstrap's
    default: on a machine that reaches only its Debian mirror, debootstrap must use that one."""
    entries: list[tuple[str, list[str]]] = []  # (uri, suites)
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.MULTILINE))
                if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                    entries += [(uri, fields.get("Suites", "").split()) for uri in fields.get("URIs", "").split()]
        elif path.suffix == ".list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]]))
    # The main archive: the entry that carries the suite itself (not -security or -updates).
    for uri, suites in entries:
        if SUITE in suites:
            return uri
    return None


def base_tarball(workdir: Path) -> Path:
    """A root filesystem of Debian `SUITE` with Python, as a tar for `docker import` (cached across runs)."""
    mirror = debian_mirror()
    options = ["--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE]
    key = hashlib.sha256(repr((options, mirror, BASE_EXCLUDES)).encode()).hexdigest()[:12]
    cached = BASE_CACHE / f"{SUITE}-minbase-{key}.tar"
    if cached.exists():
        return cached
    root = workdir / "rootfs"
    result = subprocess.run(["debootstrap", *options, str(root), *([mirror] if mirror else [])],
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"debootstrap failed: {(result.stdout + result.stderr)[-2000:]}"
    tarball = workdir / "rootfs.tar"
    excludes = [f"--exclude={pattern}" for pattern in BASE_EXCLUDES]
    subprocess.run(["tar", "--numeric-owner", *excludes, "-C", str(root), "-cf", str(tarball), "."],
                   check=True, timeout=300)
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.partial")
    shutil.copyfile(tarball, partial)
    partial.replace(cached)
    return tarball


@pytest.fixture(scope="module")
def base_image(engine: Engine) -> str:
    engine.docker("import", str(base_tarball(engine.workdir)), BASE_IMAGE, timeout=300)
    python = engine.docker("run", "--rm", "--network", "none", BASE_IMAGE, "python", "-c",
                           "import sys; print(*sys.version_info[:2], sep='.')").stdout.strip()
    host = "{}.{}".format(*sys.version_info[:2])
    assert python == host, (f"the base's Python is {python}, the host's {host}: the wheelhouse's binary wheels "
                            f"would not install; run the tests with Python {python}")
    return BASE_IMAGE


@dataclass(frozen=True, slots=True)
class BuiltImage:
    name: str
    build_seconds: float


@pytest.fixture(scope="module")
def image(engine: Engine, base_image: str) -> BuiltImage:
    """The offline build of docs/deployment.md: a wheelhouse, then `docker build --network none`."""
    context = engine.workdir / "context"
    # The whole checkout minus what git ignores anyway, so .dockerignore decides what the build sees.
    shutil.copytree(ROOT, context, ignore=shutil.ignore_patterns(
        ".git", ".venv", "tmp", "*_cache", ".hypothesis", "__pycache__", "*.egg-info", "*.whl"))
    wheels = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-cache-dir",
                             "--disable-pip-version-check", str(context), "--wheel-dir", str(context / "wheels")],
                            capture_output=True, text=True, timeout=600, check=False)
    assert wheels.returncode == 0, f"pip wheel: {wheels.stderr[-2000:]}"
    started = time.monotonic()
    engine.docker("build", "--network", "none", "--build-arg", f"PYTHON_IMAGE={base_image}",
                  "--build-arg", "INSTALL_FROM=wheels", "--tag", IMAGE, str(context), timeout=600)
    return BuiltImage(IMAGE, time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class Exited:
    """A start on a chosen port that ended before it was up: what the failure says, and the log it left."""

    summary: str
    log: str


@contextlib.contextmanager
def on_a_free_port(start: Callable[[int], contextlib.AbstractContextManager[T | Exited]],
                   attempts: int = 3) -> Iterator[T]:
    """What `start(port)` yields once up on a free port, which `start` stops afterwards. The port is told up
    front (the healthcheck reads it from the flags) and is free when chosen, not when bound (the exporter's own
    simulators and parallel runs take ports meanwhile): an exit that says `cannot_listen` is started again on
    another port; any other exit before it is up fails with its log."""
    for _ in range(attempts):
        with start(free_port()) as started:
            if not isinstance(started, Exited):
                yield started
                return
            if "cannot_listen" not in started.log:
                raise AssertionError(f"{started.summary}:\n{started.log[-2000:]}")
    raise AssertionError(f"no free port in {attempts} attempts")


def demo_container(engine: Engine, image: BuiltImage,
                   *run_options: str) -> contextlib.AbstractContextManager[tuple[str, int]]:
    """`docker run IMAGE --demo` on a free port of the host's network (127.0.0.1), once it listens: the
    container's name and the port; removed afterwards."""
    return on_a_free_port(functools.partial(_demo_container_on, engine, image, run_options))


@contextlib.contextmanager
def _demo_container_on(engine: Engine, image: BuiltImage, run_options: tuple[str, ...],
                       port: int) -> Iterator[tuple[str, int] | Exited]:
    name = f"tasks-exporter-test-{port}"
    engine.docker("run", "--detach", "--name", name, "--network", "host", *run_options, image.name,
                  "--demo", "--web.listen-address", f"127.0.0.1:{port}")
    try:
        listened, said = wait_until(functools.partial(_listened_or_exited, engine, name), 60,
                                    f"{name}: `listening` in its log")
        yield (name, port) if listened else Exited(f"{name} exited before it listened", said)
    finally:
        engine.docker("rm", "--force", name, check=False)


def _listened_or_exited(engine: Engine, name: str) -> tuple[bool, str] | None:
    """(True, log) once the container's exporter logged `listening`; (False, log) when the container stopped
    without; None while neither."""
    running = engine.inspect("container", name)["State"]["Running"]  # before the log: a stopped one's is whole
    logs = engine.docker("logs", name, check=False)
    said = logs.stdout + logs.stderr
    if any(listening_port(line) for line in said.splitlines()):
        return True, said
    return None if running else (False, said)


def get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, trust_env=False)  # loopback: never through a proxy
    except httpx.TransportError:
        return None


# ---------------------------------------------------------------------------------------------------------
# the image, running


def test_offline_build_installs_this_version(engine: Engine, image: BuiltImage) -> None:
    result = engine.docker("run", "--rm", "--network", "none", image.name, "--version")
    assert result.stdout.strip() == f"tasks-exporter {VERSION}"
    labels = engine.inspect("image", image.name)["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION


def test_demo_serves_both_sources_metrics_as_uid_10001(engine: Engine, image: BuiltImage) -> None:
    with demo_container(engine, image) as (container, port):
        def both_sources() -> str | None:
            response = get(f"http://127.0.0.1:{port}/metrics")
            text = response.text if response is not None and response.status_code == 200 else ""
            return text if re.search(r"^bitrix24_tasks\{", text, re.M) and re.search(
                r"^pachca_reminders\{", text, re.M) else None

        wait_until(both_sources, 60, "bitrix24_tasks and pachca_reminders on /metrics")
        assert engine.docker("exec", container, "id", "-u").stdout.strip() == "10001"
        assert engine.docker("exec", container, "id", "-g").stdout.strip() == "10001"
        # The exporter itself, not only what `docker exec` starts.
        status = engine.docker("exec", container, "cat", "/proc/1/status").stdout
        assert re.search(r"^Uid:\s+10001\s", status, re.M), status


def test_healthcheck_follows_the_listen_address_and_turns_healthy(engine: Engine, image: BuiltImage) -> None:
    # Only the interval is shortened (the image's 30 s would make this test wait); the command is the image's.
    with demo_container(engine, image, "--health-interval", "1s") as (container, port):
        assert port != DEFAULT_PORT
        state = engine.inspect("container", container)
        assert state["Config"]["Healthcheck"]["Test"] == ["CMD", "python", "-m", "exporter.healthcheck"]

        def health() -> str:
            return str(engine.inspect("container", container)["State"]["Health"]["Status"])

        wait_until(lambda: health() != "starting", 60, "a health verdict")
        log = engine.inspect("container", container)["State"]["Health"]["Log"]
        assert health() == "healthy", log


def test_docker_stop_ends_it_with_exit_0_within_the_grace_period(engine: Engine, image: BuiltImage) -> None:
    grace = 10
    with demo_container(engine, image) as (container, port):
        wait_until(lambda: get(f"http://127.0.0.1:{port}/healthz"), 60, "/healthz answering")
        started = time.monotonic()
        engine.docker("stop", "--time", str(grace), container, timeout=grace + 30)
        elapsed = time.monotonic() - started
        state = engine.inspect("container", container)["State"]
    assert state["ExitCode"] == 0, state
    assert not state["OOMKilled"], state
    assert elapsed < grace, f"docker stop took {elapsed:.1f}s: SIGTERM was not enough, docker sent SIGKILL"


# ---------------------------------------------------------------------------------------------------------
# the image, as files


@pytest.fixture(scope="module")
def image_files(engine: Engine, image: BuiltImage) -> list[str]:
    """Every path in the image's filesystem (relative, no leading slash), from `docker export`."""
    container = engine.docker("create", image.name).stdout.strip()
    exported = engine.workdir / "image.tar"
    try:
        engine.docker("export", "--output", str(exported), container, timeout=300)
    finally:
        engine.docker("rm", container, check=False)
    with tarfile.open(exported) as tar:
        names = [member.name.removeprefix("./").rstrip("/") for member in tar.getmembers()]
    exported.unlink()
    return names


def repository_files() -> list[PurePosixPath]:
    """The checkout's own files (sources, tests, docs, deploy files), as paths relative to its root."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    return [PurePosixPath(line) for line in files.stdout.splitlines()]


def test_image_carries_no_source_tree_tests_or_compiler(image_files: list[str]) -> None:
    installed = f"{SITE_PACKAGES}exporter/"
    assert f"{installed}__init__.py" in image_files, "the package is not installed in the virtualenv"
    assert not [name for name in image_files if name.split("/")[0] in {"src", "app"}], "a source tree at /src or /app"
    for path in repository_files():
        if path.name == "__init__.py" or (len(path.parts) < 2 and path.suffix not in {".toml", ".yaml"}):
            continue  # README.md, Makefile, tests/__init__.py: names too common to pin on this repository
        suffix = f"/{path}"
        copies = [name for name in image_files if (f"/{name}").endswith(suffix) and not name.startswith(installed)]
        assert not copies, f"the image carries the repository's {path}: {copies}"
    compilers = [name for name in image_files
                 if str(PurePosixPath(name).parent) in BIN_DIRS and COMPILERS.fullmatch(PurePosixPath(name).name)]
    assert not compilers, f"the image carries build tools: {compilers}"
    caches = [name for name in image_files if re.search(r"(^|/)\.cache/pip(/|$)", name)]
    assert not caches, f"the image carries a pip cache: {caches[:5]}"
    # Nothing in the image installs anything: pip left the virtualenv with the build stage.
    assert f"{SITE_PACKAGES}pip/__init__.py" not in image_files, "pip is still in the virtualenv"


def test_image_size_is_within_budget(engine: Engine, image: BuiltImage, request: pytest.FixtureRequest) -> None:
    size = engine.inspect("image", image.name)["Size"] / 1e6
    base = engine.inspect("image", BASE_IMAGE)["Size"] / 1e6
    report(request.config, f"image {image.name}: {size:.1f} MB ({base:.1f} MB of it the debootstrap {SUITE} "
                           f"minbase with Python, {size - base:.1f} MB the exporter's layers); offline build "
                           f"{image.build_seconds:.1f}s")
    request.node.user_properties.append(("image_size_mb", round(size, 1)))
    assert size < SIZE_BUDGET_MB, f"the image grew to {size:.1f} MB (budget {SIZE_BUDGET_MB} MB)"


# ---------------------------------------------------------------------------------------------------------
# exporter/healthcheck.py without a container


@pytest.mark.parametrize(("cmdline", "url"), [
    (["/opt/tasks-exporter/bin/python", "/opt/tasks-exporter/bin/tasks-exporter", "--config", "/c.yaml"],
     f"http://127.0.0.1:{DEFAULT_PORT}/healthz"),
    (["/opt/tasks-exporter/bin/python", "/opt/tasks-exporter/bin/tasks-exporter", "--demo",
      "--web.listen-address", "127.0.0.1:9100"], "http://127.0.0.1:9100/healthz"),
    (["/sbin/docker-init", "--", "tasks-exporter", "--web.listen-address=0.0.0.0:9101"],
     "http://127.0.0.1:9101/healthz"),
    (["python", "-m", "exporter", "--web.listen-address", "[::]:9102"], "http://[::1]:9102/healthz"),
    (["tasks-exporter", "--web.listen-address", "192.0.2.7:9103"], "http://192.0.2.7:9103/healthz"),
    (["tasks-exporter", "--web.listen-address", ":9104"], "http://127.0.0.1:9104/healthz"),
])
def test_healthcheck_asks_where_the_exporter_listens(cmdline: list[str], url: str) -> None:
    assert healthz_url(cmdline) == url


@pytest.mark.parametrize(("cmdline", "named"), [
    (["tasks-exporter", "--web.listen-address", "nonsense"], "--web.listen-address"),
    (["tasks-exporter", "--no-such-flag"], "--no-such-flag"),
])
def test_healthcheck_names_flags_it_cannot_read(cmdline: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        healthz_url(cmdline)
    (problem,) = raised.value.problems
    assert named in problem


def _exited_or_healthy(process: subprocess.Popen[bytes], url: str) -> bool:
    return process.poll() is not None or check(url, timeout=2) is None


def healthy_demo(tmp_path: Path) -> contextlib.AbstractContextManager[str]:
    """`python -m exporter --demo` on a free port, once healthy: its healthz URL; stopped afterwards."""
    return on_a_free_port(functools.partial(_demo_process_on, tmp_path))


@contextlib.contextmanager
def _demo_process_on(tmp_path: Path, port: int) -> Iterator[str | Exited]:
    log = tmp_path / f"exporter-{port}.log"
    with log.open("wb") as out:
        exporter = subprocess.Popen([sys.executable, "-m", "exporter", "--demo", "--web.listen-address",
                                     f"127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    url = healthz_url(["tasks-exporter", "--web.listen-address", f"127.0.0.1:{port}"])
    try:
        wait_until(functools.partial(_exited_or_healthy, exporter, url), 30, f"{url} healthy")
        yield url if exporter.poll() is None else Exited(
            f"the exporter exited ({exporter.returncode}) before it was healthy",
            log.read_text(encoding="utf-8", errors="replace"))
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)


def test_healthcheck_passes_on_a_serving_exporter_and_names_the_url_when_nothing_listens(tmp_path: Path) -> None:
    with healthy_demo(tmp_path) as url:
        assert check(url, timeout=2) is None
    problem = check(url, timeout=2)  # stopped now
    assert problem is not None
    assert problem.startswith(f"GET {url}: ")
