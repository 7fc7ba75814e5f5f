"""The exporter's small error hierarchy: user mistakes vs. API faults vs. bugs, and the one vocabulary of
why something failed."""

from __future__ import annotations

from typing import Literal, get_args

ApiFailureReason = Literal["auth", "rate_limited", "server_error", "timeout", "network_error",
                           "invalid_response", "api_error"]
"""Why an API request gave no usable answer. Decided once, by the client that sees the response (or its
absence), and carried by the ApiError; a cycle that fails on it reports the same word."""

FailureReason = Literal[ApiFailureReason, "deadline", "internal"]
"""Why a collection cycle failed: the `reason` label of tasks_exporter_source_failures_total. Beyond the API's
reasons: `deadline` (the cycle ran past cycle_timeout) and `internal` (a bug in the exporter)."""

RequestOutcome = Literal["success", ApiFailureReason]
"""How one HTTP request ended: the `outcome` label of tasks_exporter_api_requests_total."""

_OWN_REASONS: dict[str, ApiFailureReason] = {reason: reason for reason in get_args(ApiFailureReason)}


class ExporterError(Exception):
    """Base for every error the exporter expects and reports in one line."""


class ConfigError(ExporterError):
    """A config problem; `problems` holds one line per mistake, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ApiError(ExporterError):
    """A failed API call. `code` is the API's error code, or for a fault we detect ourselves (no answer, an
    unreadable one) the reason itself; `reason` classifies it, `retryable` drives backoff.

    `reason` defaults to `code` when the code is a reason (`ApiError("invalid_response", ...)`), else to
    `api_error`; a client that reads an answer's status and code passes it explicitly.
    """

    def __init__(self, code: str, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None, reason: ApiFailureReason | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.reason: ApiFailureReason = reason if reason is not None else _OWN_REASONS.get(code, "api_error")


class SourceFailure(ExporterError):
    """A whole collection cycle failed; `reason` is its label value (auth, rate_limited, timeout...)."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: FailureReason = reason
        self.detail = detail
