"""Crash recovery: finish or undo a deploy that was interrupted, and make the state agree with the engine.

The journal (``cd_agent/state.py``) says how far the deploy got. The rule is one line: a new
container proven healthy (journal at ``verdict``) stays and the old one goes; anything earlier is
undone (the new container removed, the old one renamed back and started). Without a journal the
state's ``current`` is made to name what the container called ``CD_CONTAINER_NAME`` runs. A deploy
run still ``running`` belongs to a process that died: it is marked ``interrupted``.

The caller holds the deploy lock (``cd_agent.deployer.Deployer``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from loguru import logger

from cd_agent.container_spec import LABEL_DIGEST, LABEL_MANAGED, LABEL_RUN, LABEL_VERSION
from cd_agent.engine import Engine
from cd_agent.errors import DeployError
from cd_agent.state import SWAP_PHASES, DeployState, Journal, Release
from shared.runstore import RunStore


def bring_back(engine: Engine, container_id: str, name: str) -> None:
    """The old container serving again under ``name``; ``DeployError`` when it is gone. Started before
    it is renamed: users wait for the start, not for the name."""
    now = engine.container(container_id)
    if now is None:
        raise DeployError(f"the old container {container_id[:12]} is gone; nothing to bring back")
    if not now.running:
        engine.start(container_id)
    if now.name != name:
        engine.rename(container_id, name)


class StrategyRecovery(Protocol):
    """A strategy with journal phases of its own (``cd_agent.blue_green.BlueGreen``)."""

    def owns(self, journal: Journal) -> bool: ...

    def recover(self, journal: Journal) -> str: ...

    def agree(self) -> str: ...


class Recovery:
    """Reconciles ``state`` (and the deploy runs in ``runs``) with the containers of ``engine``.

    Journals of the swap are handled here; those a ``strategy`` owns go to it, and its ``agree``
    runs after this one's (blue-green: the proxy serves the container called NAME)."""

    def __init__(
        self, engine: Engine, state: DeployState, runs: RunStore, *, name: str, clock: Callable[[], datetime],
        strategy: StrategyRecovery | None = None,
    ) -> None:
        self._engine = engine
        self._state = state
        self._runs = runs
        self._name = name
        self._clock = clock
        self._strategy = strategy

    def reconcile(self) -> str:
        """At start-up: recover or agree, then close stale runs. Returns (and logs) what it did."""
        journal = self._state.journal
        if journal is not None:
            message = self.recover(journal)
        else:
            message = self.agree()
            if self._strategy is not None:
                message += f"; {self._strategy.agree()}"
        stale = self.close_stale_runs()
        if stale:
            message += f"; {stale}"
        logger.info("reconcile: {}", message)
        return message

    def before_deploy(self) -> None:
        """Before a deploy: only what an interrupted deploy left behind."""
        journal = self._state.journal
        if journal is not None:
            logger.warning("reconcile before deploying: {}", self.recover(journal))
        stale = self.close_stale_runs()
        if stale:
            logger.warning("reconcile before deploying: {}", stale)

    def close_stale_runs(self) -> str:
        """Holding the deploy lock, a deploy run still ``running`` belongs to a process that died before its
        journal began (killed while pulling, say): the history must not show it running forever."""
        stale = self._runs.mark_unfinished_interrupted(kind="deploy")
        if not stale:
            return ""
        described = ", ".join(f"run {run.number} ({run.version or '?'})" for run in stale)
        return f"marked {described} interrupted: the agent stopped before the swap began"

    def recover(self, journal: Journal) -> str:
        if self._strategy is not None and self._strategy.owns(journal):
            message = self._strategy.recover(journal)
            self.agree()
        elif self._strategy is None and journal.phase not in SWAP_PHASES:
            wrote = f" ({journal.strategy})" if journal.strategy else ""
            raise DeployError(
                f"an interrupted deploy of {journal.version} (phase {journal.phase!r}) belongs to another"
                f" CD_STRATEGY{wrote}: start the agent with the strategy it was deployed with to finish it"
            )
        else:
            message = self._recover_swap(journal)
        if journal.run is not None:
            run = self._runs.get(journal.run)
            if run is not None and not run.finished:
                self._runs.update(journal.run, status="interrupted", finished_at=self._clock(), error=message)
        return message

    def _recover_swap(self, journal: Journal) -> str:
        name = journal.container_name
        engine = self._engine
        new = engine.container(journal.new_container_id) if journal.new_container_id else None
        if new is None:
            # Killed between `create` and writing its id: recognise it by our run label.
            candidate = engine.container(name)
            if candidate is not None and candidate.labels.get(LABEL_RUN) == str(journal.run):
                new = candidate
        old = engine.container(journal.old_container_id) if journal.old_container_id else None

        if journal.proven_healthy and new is not None:
            if not new.running:
                engine.start(new.id)
            if old is not None:
                engine.remove(old.id)
            previous = (
                Release(journal.old_version, journal.old_digest) if journal.old_version else self._state.current
            )
            self._state.record_deployed(Release(journal.version, journal.digest, new.id, self._clock()), previous)
            message = (
                f"finished the interrupted deploy of {journal.version}: it had been proven healthy, so it stays"
                + (f" and the old container ({journal.old_version}) was removed" if old is not None else "")
            )
        else:
            if new is not None:
                engine.remove(new.id)
            if old is not None:
                bring_back(engine, old.id, name)
                message = (
                    f"undid the interrupted deploy of {journal.version} (reached {journal.phase!r},"
                    f" not proven healthy): removed the new container; {journal.old_version} is serving again as {name}"
                )
            else:
                message = (
                    f"undid the interrupted first deploy of {journal.version} (reached {journal.phase!r}):"
                    " removed its container; the next deploy starts again"
                )
            self._state.clear_journal()
            self.agree()
        return message

    def agree(self) -> str:
        """Make ``state.current`` name what the container called NAME runs."""
        name = self._name
        container = self._engine.container(name)
        current = self._state.current
        if container is None:
            return f"no container named {name}" + (
                f" although {current.version} was deployed; the next deploy starts one" if current else ""
            )
        if container.labels.get(LABEL_MANAGED) != "true":
            return f"container {name} was not created by pi-cicd; the next deploy adopts it as the previous version"
        version = container.labels.get(LABEL_VERSION, "")
        running = "running" if container.running else f"not running ({container.status})"
        if current is None or current.version != version or current.container_id != container.id:
            digest = container.labels.get(LABEL_DIGEST) or None
            deployed_at = current.deployed_at if current and current.version == version else None
            self._state.set_current(Release(version, digest, container.id, deployed_at))
            was = current.version if current else "nothing"
            return f"state said {was} but {name} runs {version} ({running}): state updated"
        return f"state agrees with the containers: {name} runs {version} ({running})"
