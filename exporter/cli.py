"""Flags -> Config -> Exporter. The only place that exits with a code (0 ok, 1 runtime failure, 2 usage)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import structlog

from exporter import __version__, log
from exporter.app import DEFAULT_PORT, Exporter, ListenError
from exporter.config import Config, load_config
from exporter.errors import ConfigError
from exporter.webconfig import WebConfig, load_web_config


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tasks-exporter",
        description="Prometheus exporter for Bitrix24 task counters and Pachca reminders.")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--config", metavar="FILE", help="YAML config file (see config.example.yaml)")
    what.add_argument("--demo", action="store_true",
                      help="run against the built-in Bitrix24 and Pachca simulators (no credentials)")
    parser.add_argument("--web.listen-address", dest="listen", type=parse_listen,
                        default=f"0.0.0.0:{DEFAULT_PORT}", metavar="HOST:PORT",
                        help=f"address to serve /metrics on (default 0.0.0.0:{DEFAULT_PORT})")
    parser.add_argument("--web.config.file", dest="web_config", metavar="FILE",
                        help="exporter-toolkit web config: TLS and basic auth")
    parser.add_argument("--log.level", dest="log_level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log.format", dest="log_format", default="console", choices=["console", "json"])
    parser.add_argument("--check-config", action="store_true", help="validate --config and exit")
    parser.add_argument("--version", action="version", version=f"tasks-exporter {__version__}")
    args = parser.parse_args(argv)
    if args.check_config and args.demo:
        parser.error("argument --check-config: not allowed with argument --demo (it checks --config)")
    return args


def parse_listen(value: str) -> tuple[str, int]:
    """argparse type of --web.listen-address: HOST:PORT (HOST may be empty or [IPv6]) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:{DEFAULT_PORT})")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log.configure(args.log_level, args.log_format)
    logging.captureWarnings(True)  # Python's warnings are log records too
    logger = structlog.get_logger()
    try:
        if args.demo:
            config = None
        elif not args.config:
            raise ConfigError(["--config: required (or use --demo to run on the built-in simulators)"])
        else:
            config = load_config(args.config)
        if args.check_config:
            assert config is not None
            for warning in config.warnings:
                print(f"warning: {warning}", file=sys.stderr)
            print(f"{args.config}: ok ({len(config.bitrix24)} Bitrix24 portal(s), "
                  f"{len(config.pachca)} Pachca workspace(s))")
            return 0
        web_config = load_web_config(args.web_config) if args.web_config else None
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return 2
    for warning in web_config.warnings if web_config else ():
        logger.warning("web_config_warning", detail=warning)
    if config is not None:
        for warning in config.warnings:
            logger.warning("config_warning", detail=warning)
        if not config.bitrix24 and not config.pachca:
            logger.warning("no_sources", detail="the config has neither bitrix24 nor pachca; serving self-metrics only")
    host, port = args.listen
    try:
        asyncio.run(_serve(config, args.config, host, port, web_config))
    except ListenError as exc:
        logger.error("cannot_listen", address=exc.address, detail=exc.detail)
        return 1
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # a bug that stopped the exporter: say what, with its cause, and fail
        logger.error("exporter_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return 1
    return 0


# What each signal does; every one received is logged as `signal_received`. SIGKILL and SIGSTOP cannot be
# caught; SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP and SIGSYS report a crash, not a request.
RELOAD_SIGNALS = ("SIGHUP",)
# nothing in the exporter uses these; their default action would end it, and a stray kill must not stop
# the monitoring
IGNORED_SIGNALS = ("SIGUSR1", "SIGUSR2")
# the rest of those whose default action ends a process, real-time signals included
SHUTDOWN_SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR",
                    "SIGXCPU", "SIGXFSZ", "SIGSTKFLT")


def _signals(names: Sequence[str]) -> list[int]:
    return [int(getattr(signal, name)) for name in names if hasattr(signal, name)]


def _signal_name(number: int) -> str:
    if hasattr(signal, "SIGRTMIN") and signal.SIGRTMIN < number <= signal.SIGRTMAX:
        return f"SIGRTMIN+{number - signal.SIGRTMIN}"
    return signal.Signals(number).name


class _Signals:
    """Turns signals into a clean shutdown, a reload or nothing, and logs each one."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.exporter: Exporter | None = None
        self._reloads: set[asyncio.Task[list[str]]] = set()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        realtime = list(range(signal.SIGRTMIN, signal.SIGRTMAX + 1)) if hasattr(signal, "SIGRTMIN") else []
        for number in _signals(SHUTDOWN_SIGNALS) + realtime:
            loop.add_signal_handler(number, self._shutdown, number)
        for number in _signals(RELOAD_SIGNALS):
            loop.add_signal_handler(number, self._reload, number)
        for number in _signals(IGNORED_SIGNALS):
            loop.add_signal_handler(number, self._ignore, number)

    def _shutdown(self, number: int) -> None:
        structlog.get_logger().info("signal_received", signal=_signal_name(number), action="shutdown")
        self.stop.set()

    def _reload(self, number: int) -> None:
        exporter = self.exporter
        if exporter is None or self.stop.is_set():
            structlog.get_logger().info("signal_received", signal=_signal_name(number), action="ignored",
                                        reason="not serving (starting or stopping)")
            return
        structlog.get_logger().info("signal_received", signal=_signal_name(number), action="reload")
        task = asyncio.get_running_loop().create_task(exporter.reload("signal"))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def _ignore(self, number: int) -> None:
        structlog.get_logger().info("signal_received", signal=_signal_name(number), action="ignored",
                                    reason="the exporter has no use for it")


async def _serve(config: Config | None, config_file: str | None, host: str, port: int,
                 web_config: WebConfig | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(log.log_loop_exception)
    signals = _Signals(stop)
    signals.install(loop)
    if config is None:
        from exporter.demo import demo_config

        async with demo_config() as config:
            await _run(Exporter(config, host, port, web_config), signals)
    else:
        await _run(Exporter(config, host, port, web_config, config_file=config_file), signals)


async def _run(exporter: Exporter, signals: _Signals) -> None:
    async with exporter:
        signals.exporter = exporter
        await signals.stop.wait()
        structlog.get_logger().info("shutting_down")
