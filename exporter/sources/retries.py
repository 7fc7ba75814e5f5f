"""When a failed API request is tried again: one policy type and one helper, shared by both clients.

Each client adds only what its API asks for: Bitrix24 pauses a method blocked by OPERATION_TIME_LIMIT and
assumes its bucket full on QUERY_LIMIT_EXCEEDED; Pachca sleeps for Retry-After up to a cap.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from exporter.errors import ApiError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one request is tried. Each client module has its defaults (`RETRY`)."""

    attempts: int = 4  # tries of one request on 5xx, network faults, timeouts and unreadable answers
    rate_limit_attempts: int = 4  # tries of one request the API answered "over the limit"
    base_delay: float = 1.0  # backoff base_delay * 2^(n-1), capped at max_delay, x jitter 0.5-1.5
    max_delay: float = 30.0
    retry_budget: float = 30.0  # seconds of failed tries and backoff one request may spend (Retrier)


class Retrier:
    """One client's retry decisions. A fault (a timeout, a network error, a 5xx, an unreadable answer) is
    tried again at most `attempts` times, and never when the retry could end more than `retry_budget`
    seconds after the first try began, counting the failed tries and the backoff between them (pacing and
    rate-limit waits are not counted). With timeout 10 s and budget 30 s a request that meets a hang is
    tried exactly twice. Rate-limit answers are not faults: they count against `rate_limit_attempts`.

    Once a request has given up because the API did not answer at all, later requests are tried once until
    an answer (of any kind) arrives: a cycle that goes on after a failed call does not pay for retries twice.
    """

    def __init__(self, policy: RetryPolicy, timeout: float) -> None:
        self.policy = policy
        self.timeout = timeout
        self._unanswered = False

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before try `attempt` + 1: exponential, capped, with jitter."""
        delay = min(self.policy.max_delay, self.policy.base_delay * 2 ** (attempt - 1))
        return float(delay * random.uniform(0.5, 1.5))

    def answered(self) -> None:
        """The API answered (anything at all): requests get all their tries again."""
        self._unanswered = False

    def request(self) -> RequestTries:
        """The retry state of one new request."""
        return RequestTries(self)

    def allows(self, exc: ApiError, tries: int, spent: float) -> bool:
        """After `tries` failed tries and `spent` seconds of them and of backoff including the next delay:
        True when one more try (which may take all of `timeout`) is allowed."""
        no_answer = exc.reason in ("timeout", "network_error")
        if not no_answer:
            self._unanswered = False
        if (exc.retryable and not (no_answer and self._unanswered) and tries < self.policy.attempts
                and spent + self.timeout <= self.policy.retry_budget):
            return True
        self._unanswered = self._unanswered or no_answer
        return False


class RequestTries:
    """The tries of one request: call `sending()` right before each try, then one of the others."""

    __slots__ = ("_retrier", "_started", "faults", "rate_limited", "spent")

    def __init__(self, retrier: Retrier) -> None:
        self._retrier = retrier
        self._started = time.monotonic()
        self.faults = 0
        self.rate_limited = 0
        self.spent = 0.0  # seconds of failed tries and their backoff

    def sending(self) -> None:
        """A try starts now (after pacing, which the budget does not count)."""
        self._started = time.monotonic()

    def answered(self) -> None:
        self._retrier.answered()

    def after_fault(self, exc: ApiError) -> float | None:
        """Seconds to wait before the next try after the fault `exc`; None when the request gives up."""
        self.faults += 1
        delay = self._retrier.backoff(self.faults)
        self.spent += time.monotonic() - self._started + delay
        return delay if self._retrier.allows(exc, self.faults, self.spent) else None

    def after_rate_limit(self) -> bool:
        """Count a rate-limit answer (an answer, not a fault); False when the request has no such try left."""
        self._retrier.answered()
        self.rate_limited += 1
        return self.rate_limited < self._retrier.policy.rate_limit_attempts
