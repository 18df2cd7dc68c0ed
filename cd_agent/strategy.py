"""What every deploy strategy is given and does alike: the deploy context, the journal, a failed step.

``cd_agent.deployer.Deployer`` builds one ``DeployContext`` and hands it to the strategy it runs
(``cd_agent.swap.Swap``, ``cd_agent.blue_green.BlueGreen``, ``cd_agent.swarm.SwarmDeploy``); a
strategy subclasses ``StrategyBase`` and adds only what is its own (the health checker, the proxy,
the Swarm services), so a new strategy does not copy the plumbing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cd_agent.engine import ContainerInfo, Engine
from cd_agent.errors import CdError
from cd_agent.report import LOG_TAIL_LINES
from cd_agent.state import DeployState, Phase, Release

if TYPE_CHECKING:
    import loguru

    from cd_agent.apps import AppTarget


@dataclass(frozen=True)
class DeployContext:
    """The app (its settings as values, its paths), the engine, the state and the clocks of every deploy;
    ``on_phase`` is told after each journal entry (tests kill the agent there)."""

    target: AppTarget
    engine: Engine
    state: DeployState
    clock: Callable[[], datetime]
    monotonic: Callable[[], float]
    sleep: Callable[[float], None]
    on_phase: Callable[[Phase], None] | None = None
    # The versions other apps of the same image run or roll back to: image pruning keeps them.
    siblings_keep: Callable[[], frozenset[str] | None] = frozenset


@dataclass
class Attempt:
    """One deploy in progress: the release, the container it replaces, and the new one once created."""

    version: str
    digest: str | None
    old: ContainerInfo | None
    old_version: str | None
    old_digest: str | None
    new_id: str | None = None


@dataclass(frozen=True)
class StepFailure:
    """A deploy step that failed, and whether that quarantines the version."""

    step: str
    reason: str
    quarantine: bool
    log_tail: str = ""
    output: str = ""


class StrategyBase:
    """The context as attributes, and the helpers every strategy uses."""

    def __init__(self, context: DeployContext) -> None:
        self._context = context
        self._target = context.target
        self._engine = context.engine
        self._state = context.state
        self._clock = context.clock
        self._monotonic = context.monotonic
        self._sleep = context.sleep
        self._name = context.target.container_name

    def _journal(self, **changes: Any) -> None:
        """Write the journal first, then tell ``on_phase``: a kill there finds the entry on disk."""
        self._state.update_journal(**changes)
        if "phase" in changes:
            self._phase(changes["phase"])

    def _phase(self, phase: Phase) -> None:
        if self._context.on_phase is not None:
            self._context.on_phase(phase)

    def _tail(self, container: str | None) -> str:
        if container is None:
            return ""
        try:
            return self._engine.logs_tail(container, LOG_TAIL_LINES)
        except CdError as exc:
            return f"(could not read the container's log: {exc})"


def log_failure(log: loguru.Logger, version: str, failure: StepFailure) -> None:
    """The failed step into the run log, with what the health check saw and the new container's log tail."""
    log.error("{} failed at {}: {}", version, failure.step, failure.reason)
    if failure.output:
        log.error("health check output:\n{}", failure.output)
    if failure.log_tail:
        log.error("last lines of the new container's log:\n{}", failure.log_tail)


def release_version(release: Release | None) -> str | None:
    return None if release is None else release.version
