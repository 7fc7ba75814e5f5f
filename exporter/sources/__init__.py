"""API sources. Each turns one portal or workspace into a SourceData value per cycle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from exporter.snapshot import ApiTelemetry, SourceData


@dataclass(frozen=True, slots=True)
class CycleResult:
    """Everything one successful cycle produced: its data and the HTTP requests it took."""

    data: SourceData
    calls: int


class Source(Protocol):
    """What the scheduler and the store need from a source; sources never touch Prometheus types."""

    source: str  # "bitrix24" | "pachca": the `source` label
    target: str  # portal or workspace name: the `target` label
    interval: float
    cycle_timeout: float
    telemetry: ApiTelemetry  # the source's API traffic, which the store exposes

    async def collect(self) -> CycleResult:
        """One cycle. Raises exporter.errors.SourceFailure(reason, detail) for expected faults."""
        ...

    def cycle_bound(self, calls: int) -> float:
        """Least seconds the API's rate limit allows for `calls` requests (0 when it does not bind)."""
        ...

    async def aclose(self) -> None: ...
