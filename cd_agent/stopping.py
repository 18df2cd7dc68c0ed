"""Stopping the app container, and telling whether it stopped or had to be killed.

``docker stop`` sends SIGTERM and, after ``CD_STOP_TIMEOUT`` seconds, SIGKILL. The kernel delivers no
signal to a container's PID 1 that PID 1 has no handler for, so an app started as PID 1 that never
installs a SIGTERM handler (``busybox httpd``, many shell scripts, ``python app.py`` without one)
sits out the whole timeout on every stop, and is then killed. ``CD_INIT=true`` runs such an app under
Docker's init (``--init``), which is PID 1 instead and forwards SIGTERM to the app, where the default
action (exit) applies again.

A stop that ran into the timeout leaves the container with exit code 137 (128 + SIGKILL) while the
kernel's OOM killer was not the one to kill it: that is what ``StopOutcome.killed`` reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cd_agent.engine import Engine
from cd_agent.errors import CdError

if TYPE_CHECKING:
    import loguru

SIGKILL_EXIT_CODE = 128 + 9


@dataclass(frozen=True)
class StopOutcome:
    seconds: float
    killed: bool
    exit_code: int | None


def stop_container(
    engine: Engine, container: str, *, timeout: float, monotonic: Callable[[], float]
) -> StopOutcome:
    """Stop ``container`` (SIGTERM, SIGKILL after ``timeout`` s); whether it needed the SIGKILL."""
    started = monotonic()
    engine.stop(container, timeout=timeout)
    return stop_outcome(engine, container, monotonic() - started)


def stop_outcome(engine: Engine, container: str, seconds: float) -> StopOutcome:
    """How the stop of ``container`` that took ``seconds`` ended. Separate from the stop so that the swap
    can start the new container first: nothing but the stop and the start sits in its outage."""
    try:
        info = engine.container(container)
    except CdError:
        # The stop is done; what it ended with is only for the log, so this never fails a deploy.
        info = None
    if info is None:
        return StopOutcome(seconds, killed=False, exit_code=None)
    killed = not info.running and info.exit_code == SIGKILL_EXIT_CODE and not info.oom_killed
    return StopOutcome(seconds, killed=killed, exit_code=info.exit_code)


def log_stop(log: loguru.Logger, what: str, outcome: StopOutcome, *, timeout: float, init: bool) -> None:
    """One line saying how ``what`` stopped; a kill says why and what to do about it."""
    if not outcome.killed:
        log.info("stopped {} in {:.1f}s, within CD_STOP_TIMEOUT={:g}s", what, outcome.seconds, timeout)
        return
    hint = (
        "its process ignores SIGTERM even under CD_INIT: make it exit on SIGTERM"
        if init
        else "its main process (PID 1) does not handle SIGTERM: set CD_INIT=true, or make it exit on SIGTERM"
    )
    log.warning(
        "{} ran into CD_STOP_TIMEOUT={:g}s and was killed (SIGKILL, exit code 137) after {:.1f}s: {}",
        what, timeout, outcome.seconds, hint,
    )
