"""The agent's repositories at run time: the live configuration and what each repository owns.

``LiveTargets`` holds the ``RepoTargets`` in force; a reload (SIGHUP) replaces the whole record at
once, so a reader sees the old configuration or the new one, never a mix. What each repository owns
follows it:

- ``RepoPipelines``: one pipeline per repository, built on its first run (the Docker SDK and git
  clients load then, not at start) and built again for the next run after a reload changed the
  repository's settings. A run in progress keeps the pipeline, and so the settings, it started with.
- ``StatusRouter``: each run's commit status goes through its own repository's reporter
  (``github_token`` / ``github_repo`` per repository).
- ``Pollers``: one poller per repository with a ``poll_interval``; a reload stops the pollers of
  repositories gone or changed and starts the new ones.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING

from loguru import logger

from ci_agent.commit_status import CommitStatusReporter
from ci_agent.payload import PushEvent
from ci_agent.poller import Poller
from ci_agent.targets import RepoTarget, RepoTargets
from shared.runstore import Run, RunStore, utc_now

if TYPE_CHECKING:
    from ci_agent.pipeline import Pipeline

_log = logger.bind(agent="ci", component="repos")


class LiveTargets:
    """The repositories in force; :meth:`replace` swaps them whole (a reload)."""

    def __init__(self, targets: RepoTargets) -> None:
        self._targets = targets
        self._listeners: list[Callable[[RepoTargets, RepoTargets], None]] = []

    @property
    def current(self) -> RepoTargets:
        return self._targets

    def on_replace(self, listener: Callable[[RepoTargets, RepoTargets], None]) -> None:
        """Call ``listener(old, new)`` after each :meth:`replace`."""
        self._listeners.append(listener)

    def replace(self, targets: RepoTargets) -> None:
        old, self._targets = self._targets, targets
        for listener in self._listeners:
            listener(old, targets)

    def for_run(self, run: Run) -> RepoTarget | None:
        """The repository of ``run``; a run recorded without one (a store from before) is the only repository's."""
        targets = self._targets
        if not targets.from_file or (run.scope is None and len(targets) == 1):
            # Without a repos file there is one repository, whatever name an earlier start gave it.
            return targets.first
        return targets.get(run.scope)


class RepoPipelines:
    """The worker's ``RunExecutor``: each run goes to its repository's pipeline, built when first needed."""

    def __init__(
        self, targets: LiveTargets, store: RunStore, build: Callable[[RepoTarget, ExitStack], Pipeline]
    ) -> None:
        self._targets = targets
        self._store = store
        self._build = build
        self._lock = threading.Lock()
        self._pipelines: dict[str, tuple[RepoTarget, Pipeline]] = {}
        # Every pipeline's effects, closed at the end: a replaced one may still be finishing a run.
        self._closers = ExitStack()

    def get(self, target: RepoTarget) -> Pipeline:
        with self._lock:
            built = self._pipelines.get(target.name)
            if built is None or built[0] != target:
                built = (target, self._build(target, self._closers))
                self._pipelines[target.name] = built
            return built[1]

    @property
    def built(self) -> bool:
        return bool(self._pipelines)

    def execute(self, run: Run, event: PushEvent) -> Run:
        target = self._targets.for_run(run)
        if target is None:
            return self._orphan(run)
        return self.get(target).execute(run, event)

    def fail(self, run: Run, message: str) -> Run:
        target = self._targets.for_run(run)
        if target is None:
            return self._orphan(run)
        return self.get(target).fail(run, message)

    def _orphan(self, run: Run) -> Run:
        # Queued before a reload removed its repository: nothing to run it with, and nothing is lost
        # by saying so (the push can be delivered again once the repository is back).
        message = f"repository {run.scope!r} is no longer configured (removed from CI_REPOS_FILE)"
        _log.warning("run {}: {}", run.number, message)
        return self._store.update(run.number, status="failed", error=message, finished_at=utc_now())

    def close(self) -> None:
        with self._lock:
            self._closers.close()


class StatusRouter:
    """``report(run)`` through the reporter of the run's repository; reporters follow reloads."""

    def __init__(self, targets: LiveTargets, make: Callable[[RepoTarget], CommitStatusReporter]) -> None:
        self._targets = targets
        self._make = make
        self._lock = threading.Lock()
        self._reporters: dict[str, tuple[RepoTarget, CommitStatusReporter]] = {}
        self._retired: list[CommitStatusReporter] = []
        self.follow(targets.current)

    def follow(self, targets: RepoTargets) -> None:
        """Reporters for ``targets``: kept where nothing changed, made for the rest."""
        with self._lock:
            kept: dict[str, tuple[RepoTarget, CommitStatusReporter]] = {}
            for target in targets:
                have = self._reporters.get(target.name)
                if have is not None and _status_key(have[0]) == _status_key(target):
                    kept[target.name] = (target, have[1])
                else:
                    kept[target.name] = (target, self._make(target))
            self._retired += [
                reporter for name, (_, reporter) in self._reporters.items()
                if kept.get(name, (None, None))[1] is not reporter
            ]
            self._reporters = kept

    def report(self, run: Run) -> None:
        target = self._targets.for_run(run)
        with self._lock:
            found = self._reporters.get(target.name) if target is not None else None
        if found is not None:
            found[1].report(run)

    def close(self) -> None:
        with self._lock:
            reporters = [reporter for _, reporter in self._reporters.values()] + self._retired
        for reporter in reporters:
            reporter.close()


def _status_key(target: RepoTarget) -> tuple[object, ...]:
    return (target.github_repo, target.github_token)


class Pollers:
    """One poller per repository with a ``poll_interval``, started and stopped as reloads say."""

    def __init__(self, make: Callable[[RepoTarget], Poller]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._running: dict[str, tuple[RepoTarget, Poller]] = {}

    def follow(self, targets: RepoTargets) -> None:
        with self._lock:
            wanted = {target.name: target for target in targets if target.poll_interval is not None}
            for name, (target, poller) in list(self._running.items()):
                if wanted.get(name) != target:
                    poller.stop(timeout=5)
                    del self._running[name]
            for name, target in wanted.items():
                if name not in self._running:
                    poller = self._make(target)
                    poller.start()
                    self._running[name] = (target, poller)

    def stop(self, timeout: float = 5) -> None:
        with self._lock:
            for _, poller in self._running.values():
                poller.stop(timeout=timeout)
            self._running.clear()
