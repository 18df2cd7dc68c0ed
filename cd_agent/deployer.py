"""One deploy at a time: the public face of the CD agent's deploys (``deploy``, ``rollback``, ``reconcile``).

Like Watchtower's ``Update(client, params) -> report``, the deploy itself is a strategy over a small
``Engine`` interface that returns a ``DeployReport`` (``cd_agent/swap.py`` for ``CD_STRATEGY=swap``);
crash recovery lives in ``cd_agent/recovery.py``. This module adds what every strategy shares: the
lock, the quarantine rules, and the run (a run in the run store with its own log file, finished with
the report, an email rendered by ``cd_agent.report.render_email``).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime

from loguru import logger

from cd_agent.apps import AppPaths, AppTarget
from cd_agent.blue_green import Proxy
from cd_agent.compose_project import ComposeRunner
from cd_agent.container_spec import LABEL_VERSION
from cd_agent.engine import Engine
from cd_agent.errors import CdError, DeployError, NothingToDeploy
from cd_agent.health import HealthChecker, probe_url
from cd_agent.report import Action, DeployReport, render_email
from cd_agent.state import DeployState, Phase, Release
from cd_agent.strategies import STRATEGIES, KnowsWhatRuns, Parts, Strategy
from cd_agent.strategy import DeployContext, release_version
from cd_agent.swarm_services import SwarmServices
from shared.disk import DiskFloor
from shared.notify import Notifier
from shared.private_files import open_private_append
from shared.run_lifecycle import RunLifecycle, RunScope
from shared.runstore import RunStore, utc_now

__all__ = ["DeployReport", "Deployer", "Strategy"]


class Deployer:
    """Deploys releases of ``target.image`` as the container ``target.container_name``.

    One deploy of an app at a time, across threads and processes (a lock file in the app's state
    folder), so ``cd-agent deploy`` cannot run into the watcher's deploy. ``on_phase`` is called after each
    journal entry is written (tests use it to kill the process at a chosen phase); ``monotonic``,
    ``sleep`` and ``probe`` drive the health checks (tests pass a fake clock).
    """

    def __init__(
        self,
        target: AppTarget,
        docker: Engine,
        state: DeployState,
        runs: RunStore,
        notifier: Notifier,
        *,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        probe: Callable[[str, float], tuple[bool, str]] = probe_url,
        on_phase: Callable[[Phase], None] | None = None,
        swarm: SwarmServices | None = None,
        proxy: Proxy | None = None,
        compose: ComposeRunner | None = None,
        log_retention: int = 200,
        siblings: Sequence[AppPaths] = (),
        disk: DiskFloor | None = None,
    ) -> None:
        self.target = target
        self.docker = docker
        self.state = state
        self.runs = runs
        self.notifier = notifier
        self._clock = clock
        self._lifecycle = RunLifecycle(runs, notifier, clock=clock)
        self._monotonic = monotonic
        self._sleep = sleep
        self._probe = probe
        self._log_retention = log_retention  # LOG_RETENTION_RUNS, counted in the app's own log folder
        self._siblings = tuple(siblings)
        self._disk = disk  # DISK_MIN_FREE: no deploy starts (nothing is pulled) on a nearly full disk
        context = DeployContext(target, docker, state, clock, monotonic, sleep, on_phase, self._siblings_keep)
        row = STRATEGIES[target.strategy]
        if proxy is None and swarm is None:  # no fakes handed in: the strategy's real adapters, if any
            made = row.adapters(target, docker)
            proxy, swarm = made.proxy, made.swarm
        self.swarm = swarm
        parts = Parts(health=self._health, runs=runs, proxy=proxy, swarm=swarm, compose=compose)
        self._strategy: Strategy = row.build(context, parts)
        self._recovery = row.recovery(context, parts, self._strategy)

    # public API

    def deploy(self, version: str, *, digest: str | None = None, force: bool = False) -> DeployReport:
        """Deploy ``version`` (a tag of the app's image). Quarantined versions only with ``force``.

        Returns ``noop`` when that version already runs (unless forced). Raises ``NothingToDeploy``
        for a quarantined version without ``force``; Docker trouble outside the run raises
        ``DockerUnavailable``; everything inside a run ends in the report instead.
        """
        with self._exclusive():
            self._recovery.before_deploy()
            quarantine = self.state.quarantined.get(version)
            if quarantine is not None and not force:
                raise NothingToDeploy(
                    f"{version} is quarantined since {quarantine.since:%Y-%m-%d %H:%M} UTC ({quarantine.reason}); "
                    "deploy it with --force to try again"
                )
            current = self.state.current
            if not force and current is not None and current.version == version and self._already_runs(current):
                logger.info("{} is already deployed and running; nothing to do", version)
                return DeployReport("noop", version, release_version(self.state.previous))
            if force and quarantine is not None:
                self.state.release_quarantine(version)
            return self._run(version, digest, action="deploy")

    def _already_runs(self, current: Release) -> bool:
        if isinstance(self._strategy, KnowsWhatRuns):
            return self._strategy.already_runs(current)
        running = self.docker.container(self.target.container_name)
        return running is not None and running.running and running.labels.get(LABEL_VERSION) == current.version

    def rollback(self) -> DeployReport:
        """Deploy ``state.previous`` again; the version rolled back from is quarantined (so the watcher
        does not bring it straight back) until a newer release appears or it is deployed with --force."""
        with self._exclusive():
            self._recovery.before_deploy()
            previous, current = self.state.previous, self.state.current
            if previous is None:
                raise NothingToDeploy("there is no previous version to roll back to")
            report = self._run(previous.version, previous.digest, action="rollback")
            if report.outcome == "deployed" and current is not None and current.version != previous.version:
                self.state.quarantine(current.version, f"rolled back by hand to {previous.version}")
            return report

    def reconcile(self) -> str:
        """At start-up: finish or undo a deploy that was interrupted, and make the state agree with the
        containers. Returns (and logs) what it did."""
        with self._exclusive():
            return self._recovery.reconcile()

    # one run

    def _run(self, version: str, digest: str | None, *, action: Action) -> DeployReport:
        begun = self._monotonic()
        target = self.target
        scope = RunScope(target.name, target.paths.log_dir, self._log_retention)
        run = self.runs.create(
            kind="deploy", status="running", scope=target.name, details={"action": action, "version": version}
        )
        with self._lifecycle.open(run, scope, version=version) as opened:
            log = opened.log
            log.info("{} {} of {} as {} (app {}, {})", action, version, target.image.name,
                     target.runs_as, target.name, target.strategy)
            try:
                low = self._disk.problem("pull") if self._disk is not None else None
                if low is not None:
                    log.error("{} of {} not started: {}", action, version, low)
                    report = DeployReport(
                        "failed", version, release_version(self.state.current), low, failed_step="disk"
                    )
                else:
                    if self._disk is not None and self._disk.unchecked:
                        log.info("free space not checked (DISK_MIN_FREE): {}", self._disk.unchecked)
                    report = self._strategy.deploy(log, version, digest, run.number)
            except CdError as exc:
                # Past the steps a strategy reports on (the state unwritable after the verdict, say): the
                # run still ends, and a journal left behind is reconciled before the next deploy.
                log.error("{} of {} stopped: {}", action, version, exc)
                report = DeployReport(
                    "failed", version, release_version(self.state.current), str(exc), failed_step="deploy"
                )
            report = replace(report, run=run.number, duration_s=round(self._monotonic() - begun, 3))
            log.info("run {} finished: {}", run.number, report.outcome)
        self._lifecycle.finish(
            run,
            scope,
            status="succeeded" if report.succeeded else "failed",
            failed_step=report.failed_step,
            error=report.error,
            details={"action": action, "version": version, **report.to_json()},
            email=render_email(
                report, action=action, app=target.name, image=target.image.name,
                container=target.container_name, log_path=opened.log_path,
            ),
        )
        return report

    def _health(self, url: str | None) -> HealthChecker:
        """The health checker probing ``url`` (blue-green: CD_HEALTH_URL at the new container's own address)."""
        return HealthChecker(
            self.docker,
            url=url,
            timeout=self.target.health_timeout,
            grace=self.target.health_grace,
            clock=self._monotonic,
            sleep=self._sleep,
            probe=self._probe,
        )

    def _siblings_keep(self) -> frozenset[str] | None:
        """The current and previous versions of the other apps of this image (``siblings``: their paths);
        None when one cannot be read."""
        versions: set[str] = set()
        for paths in self._siblings:
            if not paths.state.exists():
                continue
            try:
                with DeployState(paths.state) as state:
                    versions.update(release.version for release in (state.current, state.previous) if release)
            except CdError as exc:
                # Unreadable: keep every older tag rather than guess (pruning is housekeeping).
                logger.warning("not pruning images: cannot read {}: {}", paths.state, exc)
                return None
        return frozenset(versions)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        # 0600: anyone who can open the lock file can hold it and block every deploy.
        with os.fdopen(open_private_append(self.target.paths.lock), "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise DeployError(
                    f"another deploy is in progress (app {self.target.name}: the watcher or another cd-agent command)"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

