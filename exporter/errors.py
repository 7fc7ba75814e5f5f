"""The exporter's small error hierarchy: user mistakes vs. API faults vs. bugs."""

from __future__ import annotations


class ExporterError(Exception):
    """Base for every error the exporter expects and reports in one line."""


class ConfigError(ExporterError):
    """A config problem; `problems` holds one line per mistake, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ApiError(ExporterError):
    """A failed API call. `code` is the API's error code (or our own reason), `retryable` drives backoff."""

    def __init__(self, code: str, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class SourceFailure(ExporterError):
    """A whole collection cycle failed; `reason` is a short label value (auth, rate_limited, timeout...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
