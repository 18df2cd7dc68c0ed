"""Retrying registry calls with tenacity: wait what the registry asked for, else back off exponentially.

Only ``RegistryUnavailable`` (and so ``RateLimited``) is retried: refused credentials or a missing
repository do not get better by asking again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import tenacity
from loguru import logger
from tenacity.wait import wait_base

from shared.errors import RegistryUnavailable


# Lower-case like tenacity's own wait_* strategies, which it sits beside.
class wait_retry_after(wait_base):
    """Wait the ``retry_after`` the registry gave (429 / 503 Retry-After), else ``fallback``; never over ``cap``."""

    def __init__(self, fallback: wait_base, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(error, RegistryUnavailable) and error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.cap)
        return min(max(self.fallback(retry_state), 0.0), self.cap)


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
    logger.warning(
        "registry call failed (attempt {}): {}; retrying in {:.1f}s", retry_state.attempt_number, error, wait
    )


def retry_registry(
    attempts: int,
    max_wait: float,
    *,
    initial_wait: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> tenacity.Retrying:
    """A ``Retrying`` for registry calls: ``attempts`` tries in all, exponential jittered waits from
    ``initial_wait`` up to ``max_wait`` unless the registry said how long; the last error is re-raised.

    ``for attempt in retry_registry(5, 60): with attempt: tags = client.list_tags()``
    or ``retry_registry(5, 60)(client.list_tags)``.
    """
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait_retry_after(tenacity.wait_exponential_jitter(initial=initial_wait, max=max_wait), cap=max_wait),
        retry=tenacity.retry_if_exception_type(RegistryUnavailable),
        reraise=True,
        sleep=sleep,
        before_sleep=_log_retry,
    )
