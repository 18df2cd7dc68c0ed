"""Waiting for a condition with a deadline: the only way tests synchronise with processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Call ``condition`` until it returns something truthy and return that, or fail after ``timeout``.

    Exceptions raised by ``condition`` count as "not yet"; the last one is shown on failure.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}{detail}")
        time.sleep(interval)


# ``serve_forever(poll_interval=...)`` for the tests' own servers: ``shutdown()`` waits until the loop looks
# again, up to half a second with the default, and most tests stop a server or two at teardown.
SHUTDOWN_POLL = {"poll_interval": 0.05}
