"""Retrying registry calls: honour Retry-After (capped), back off otherwise, retry only what may get better."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import tenacity

from shared.backoff import retry_registry, wait_retry_after
from shared.errors import RateLimited, RegistryAuthError, RegistryError, RegistryNotFound, RegistryUnavailable


def failing_then(result: str, errors: list[Exception]) -> Callable[[], str]:
    """A call that raises each of ``errors`` in turn, then returns ``result``."""
    remaining = list(errors)

    def call() -> str:
        if remaining:
            raise remaining.pop(0)
        return result

    return call


def run(errors: list[Exception], *, attempts: int = 5, max_wait: float = 60.0) -> tuple[str, list[float]]:
    sleeps: list[float] = []
    result = retry_registry(attempts, max_wait, sleep=sleeps.append)(failing_then("ok", errors))
    return result, sleeps


def test_retry_after_from_the_registry_is_waited() -> None:
    result, sleeps = run([RateLimited("429", retry_after=7.0), RegistryUnavailable("503", retry_after=2.5)])
    assert result == "ok"
    assert sleeps == [7.0, 2.5]


def test_retry_after_is_capped_by_max_wait() -> None:
    _, sleeps = run([RateLimited("429", retry_after=21600.0)], max_wait=30.0)
    assert sleeps == [30.0]


def test_without_retry_after_the_wait_grows_exponentially_and_stays_under_max_wait() -> None:
    _, sleeps = run([RegistryUnavailable("down")] * 6, attempts=7, max_wait=10.0)
    assert len(sleeps) == 6
    # wait_exponential_jitter: initial * 2**n plus up to 1s of jitter, capped.
    for n, slept in enumerate(sleeps):
        assert min(2.0**n, 10.0) <= slept <= min(2.0**n + 1.0, 10.0)
    assert sleeps[-1] == 10.0


def test_gives_up_after_the_attempts_and_reraises_the_last_error() -> None:
    last = RegistryUnavailable("still down")
    sleeps: list[float] = []
    with pytest.raises(RegistryUnavailable) as error:
        call = failing_then("ok", [RegistryUnavailable("a"), RegistryUnavailable("b"), last])
        retry_registry(3, 5.0, sleep=sleeps.append)(call)
    assert error.value is last
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    "error", [RegistryAuthError("refused"), RegistryNotFound("gone"), RegistryError("odd answer"), ValueError("bug")]
)
def test_errors_that_do_not_get_better_are_not_retried(error: Exception) -> None:
    sleeps: list[float] = []
    with pytest.raises(type(error)):
        retry_registry(5, 5.0, sleep=sleeps.append)(failing_then("ok", [error]))
    assert sleeps == []


def test_works_as_an_attempt_iterator() -> None:
    call = failing_then("tags", [RegistryUnavailable("blip", retry_after=0.0)])
    result = None
    for attempt in retry_registry(3, 5.0, sleep=lambda _: None):
        with attempt:
            result = call()
    assert result == "tags"


def test_wait_retry_after_uses_the_fallback_for_other_errors() -> None:
    wait = wait_retry_after(tenacity.wait_fixed(4.0), cap=3.0)
    sleeps: list[float] = []
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(3), wait=wait, sleep=sleeps.append, reraise=True,
        retry=tenacity.retry_if_exception_type(Exception),
    )
    assert retrying(failing_then("ok", [OSError("x"), RateLimited("429", retry_after=1.0)])) == "ok"
    assert sleeps == [3.0, 1.0]
