"""API sources. Each turns one portal or workspace into a SourceData value per cycle."""

from __future__ import annotations

from typing import Protocol

from exporter.snapshot import SourceData


class Source(Protocol):
    """What the scheduler needs from a source; sources never touch Prometheus types."""

    source: str  # "bitrix24" | "pachca": the `source` label
    target: str  # portal or workspace name: the `target` label
    interval: float
    cycle_timeout: float
    last_calls: int  # HTTP requests the last cycle made

    async def collect(self) -> SourceData:
        """One cycle. Raises exporter.errors.SourceFailure(reason, detail) for expected faults."""
        ...

    def cycle_bound(self, calls: int) -> float:
        """Least seconds the API's rate limit allows for `calls` requests (0 when it does not bind)."""
        ...

    async def aclose(self) -> None: ...
