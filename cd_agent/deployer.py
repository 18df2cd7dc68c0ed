"""One deploy: swap the app container for a new release, prove it healthy, or put the old one back.

The old container is never removed before the new one is proven::

    pull (old serves) -> rename old to NAME-previous-X -> create new as NAME -> stop old -> start new
      -> health verdict -> healthy:   remove old (its image stays), prune older images, "deployed X"
                        -> unhealthy: keep new's log tail, remove new, rename old back, start it,
                                      quarantine the version, "deploy of X failed"

Each step is written to the state journal before it is taken, so ``reconcile()`` can finish or undo a
deploy that was killed half-way. Every deploy is a run in the run store with its own log file.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger

from cd_agent.container_spec import LABEL_DIGEST, LABEL_MANAGED, LABEL_RUN, LABEL_VERSION, build_spec, read_env_file
from cd_agent.docker_gateway import DockerGateway
from cd_agent.engine import ContainerInfo, ImageInfo
from cd_agent.errors import CdError, DeployError, NothingToDeploy
from cd_agent.health import HealthChecker
from cd_agent.settings import CdSettings
from cd_agent.state import DeployState, Journal, Phase, Release
from shared.logs import prune_run_logs, run_log, run_log_path
from shared.notify import Email, Notifier
from shared.runstore import RunStore, utc_now
from shared.versions import parse_version

if TYPE_CHECKING:
    import loguru

Outcome = Literal["deployed", "rolled_back", "failed", "noop"]
LOG_TAIL_LINES = 50
# An unmanaged container whose image tag is not a version is still adopted, under this name.
ADOPTED = "adopted"


@dataclass(frozen=True)
class DeployReport:
    """What a deploy or rollback did.

    ``outcome``: ``deployed`` (``version`` runs and is healthy), ``rolled_back`` (``version`` was
    unhealthy; ``previous`` serves again), ``failed`` (nothing was swapped, or nothing could be
    restored: see ``error``), ``noop`` (``version`` already runs). ``downtime_s`` is measured from
    stopping the old container to the verdict (an upper bound of the outage).
    """

    outcome: Outcome
    version: str
    previous: str | None
    error: str | None = None
    log_tail: str | None = None
    run: int | None = None
    duration_s: float = 0.0
    downtime_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome, "version": self.version, "previous": self.previous, "error": self.error,
            "log_tail": self.log_tail, "run": self.run, "duration_s": self.duration_s, "downtime_s": self.downtime_s,
        }


class _SwapFailed(Exception):
    """Inside ``_swap``: the new container must go and the old one come back."""

    def __init__(self, step: str, reason: str, *, quarantine: bool, log_tail: str = "", output: str = "") -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason
        self.quarantine = quarantine
        self.log_tail = log_tail
        self.output = output


class Deployer:
    """Deploys releases of ``settings.cd_image`` as the container ``settings.cd_container_name``.

    One deploy at a time, across threads and processes (a lock file under ``STATE_DIR``), so
    ``cd-agent deploy`` cannot run into the watcher's deploy. ``on_phase`` is called after each
    journal entry is written (tests use it to kill the process at a chosen phase).
    """

    def __init__(
        self,
        settings: CdSettings,
        docker: DockerGateway,
        state: DeployState,
        runs: RunStore,
        notifier: Notifier,
        *,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        on_phase: Callable[[Phase], None] | None = None,
    ) -> None:
        self.settings = settings
        self.docker = docker
        self.state = state
        self.runs = runs
        self.notifier = notifier
        self._clock = clock
        self._monotonic = monotonic
        self._on_phase = on_phase
        self._repository = settings.image.name

    # public API

    def deploy(self, version: str, *, digest: str | None = None, force: bool = False) -> DeployReport:
        """Deploy ``version`` (a tag of CD_IMAGE). Quarantined versions only with ``force``.

        Returns ``noop`` when that version already runs (unless forced). Raises ``NothingToDeploy``
        for a quarantined version without ``force``; Docker trouble outside the swap raises
        ``DockerUnavailable``; everything inside a run ends in the report instead.
        """
        with self._exclusive():
            self._reconcile_if_interrupted()
            quarantine = self.state.quarantined.get(version)
            if quarantine is not None and not force:
                raise NothingToDeploy(
                    f"{version} is quarantined since {quarantine.since:%Y-%m-%d %H:%M} UTC ({quarantine.reason}); "
                    "deploy it with --force to try again"
                )
            current = self.state.current
            if not force and current is not None and current.version == version:
                running = self.docker.container(self.settings.cd_container_name)
                if running is not None and running.running and running.labels.get(LABEL_VERSION) == version:
                    logger.info("{} is already deployed and running; nothing to do", version)
                    return DeployReport("noop", version, _version(self.state.previous))
            if force and quarantine is not None:
                self.state.release_quarantine(version)
            return self._run(version, digest, action="deploy")

    def rollback(self) -> DeployReport:
        """Deploy ``state.previous`` again; the version rolled back from is quarantined (so the watcher
        does not bring it straight back) until a newer release appears or it is deployed with --force."""
        with self._exclusive():
            self._reconcile_if_interrupted()
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
            journal = self.state.journal
            message = self._recover(journal) if journal is not None else self._agree()
            stale = self._close_stale_runs()
            if stale:
                message += f"; {stale}"
            logger.info("reconcile: {}", message)
            return message

    # one run

    def _run(self, version: str, digest: str | None, *, action: Literal["deploy", "rollback"]) -> DeployReport:
        started = self._clock()
        begun = self._monotonic()
        run = self.runs.create(kind="deploy", status="running", details={"action": action, "version": version})
        path = run_log_path(self.settings.log_dir, started, run.number)
        self.runs.update(run.number, version=version, started_at=started, log_path=str(path))
        with run_log(path, run.number) as log:
            log.info("{} {} of {} as container {}", action, version, self._repository, self.settings.cd_container_name)
            report, step, body = self._swap(log, run.number, version, digest)
            report = DeployReport(
                report.outcome, report.version, report.previous, report.error, report.log_tail,
                run.number, round(self._monotonic() - begun, 3), report.downtime_s,
            )
            log.info("run {} finished: {}", run.number, report.outcome)
        succeeded = report.outcome in ("deployed", "noop")
        self.runs.update(
            run.number,
            status="succeeded" if succeeded else "failed",
            finished_at=self._clock(),
            failed_step=None if succeeded else step,
            error=report.error,
            details={"action": action, "version": version, **report.to_json()},
        )
        self.notifier.notify(self._email(report, action, body, path))
        prune_run_logs(self.settings.log_dir, self.settings.log_retention_runs)
        return report

    def _swap(
        self, log: loguru.Logger, run: int, version: str, digest: str | None
    ) -> tuple[DeployReport, str | None, str]:
        """The deploy itself: (report, failed step, text for the email)."""
        name = self.settings.cd_container_name
        try:
            image = self._pull(log, version, digest)
        except CdError as exc:
            log.error("could not get the image: {}", exc)
            current = self.state.current
            return DeployReport("failed", version, _version(current), str(exc)), "pull", str(exc)
        digest = image.digest_for(self._repository) or digest

        old = self.docker.container(name)
        old_version, old_digest = self._describe_old(log, old)
        journal = Journal(
            version=version, container_name=name, phase="pulled", started_at=self._clock(), run=run, digest=digest,
            old_container_id=old.id if old else None, old_version=old_version, old_digest=old_digest,
        )
        self.state.begin_journal(journal)
        self._phase("pulled")

        new_id: str | None = None
        stopped_at: float | None = None
        try:
            if old is not None:
                renamed = self._free_name(f"{name}-previous-{old_version}")
                self._journal(phase="old_renamed", old_renamed_to=renamed)
                self.docker.rename(old.id, renamed)
                log.info("renamed the running container {} to {} (it keeps serving)", name, renamed)
            spec = build_spec(
                self.settings, image=f"{self._repository}:{version}", version=version, digest=digest,
                env=read_env_file(self.settings.cd_env_file), old=old, run=run,
            )
            try:
                new_id = self.docker.create(spec)
            except CdError as exc:
                raise _SwapFailed("create", str(exc), quarantine=False) from exc
            self._journal(phase="created", new_container_id=new_id)
            log.info("created container {} ({}) with mounts {}", name, new_id[:12], [m.target for m in spec.mounts])
            if old is not None and old.running:
                stopped_at = self._monotonic()
                self.docker.stop(old.id, timeout=self.settings.cd_stop_timeout)
                log.info("stopped the old container ({})", old_version)
            stopped_at = stopped_at or self._monotonic()
            self._journal(phase="old_stopped")
            try:
                self.docker.start(new_id)
            except CdError as exc:
                raise _SwapFailed("start", str(exc), quarantine=True, log_tail=self._tail(new_id)) from exc
            self._journal(phase="new_started")
            log.info("started {}; health check (timeout {:g}s)", version, self.settings.cd_health_timeout)
            verdict = self._health().wait(new_id)
            if not verdict.healthy:
                raise _SwapFailed(
                    "health", verdict.reason, quarantine=True, log_tail=self._tail(new_id), output=verdict.output
                )
        except _SwapFailed as failure:
            return self._restore(log, version, old, old_version, new_id, stopped_at, failure)
        except CdError as exc:
            tail = self._tail(new_id) if new_id else ""
            broken = _SwapFailed("swap", str(exc), quarantine=False, log_tail=tail)
            return self._restore(log, version, old, old_version, new_id, stopped_at, broken)

        self._journal(phase="verdict", healthy=True)
        downtime = round(self._monotonic() - stopped_at, 3)
        log.info("{} is healthy: {}", version, verdict.reason)
        if old is not None:
            self._quietly(log, "remove the old container", lambda: self.docker.remove(old.id))
        previous = self._previous_release(old, old_version, old_digest, version)
        self.state.record_deployed(Release(version, digest, new_id, self._clock()), previous)
        self._prune_images(log, version, previous.version if previous else None)
        body = (
            f"{self._repository}:{version} is running as {name}.\n"
            f"Previous version: {previous.version if previous else 'none'}\n"
            f"Digest: {digest or 'unknown'}\nHealth: {verdict.reason}\n"
        )
        return (
            DeployReport("deployed", version, previous.version if previous else None, downtime_s=downtime),
            None,
            body,
        )

    def _restore(
        self,
        log: loguru.Logger,
        version: str,
        old: ContainerInfo | None,
        old_version: str | None,
        new_id: str | None,
        stopped_at: float | None,
        failure: _SwapFailed,
    ) -> tuple[DeployReport, str | None, str]:
        name = self.settings.cd_container_name
        log.error("{} failed at {}: {}", version, failure.step, failure.reason)
        if failure.output:
            log.error("health check output:\n{}", failure.output)
        if failure.log_tail:
            log.error("last lines of the new container's log:\n{}", failure.log_tail)
        try:
            if new_id is not None:
                self.docker.remove(new_id)
                log.info("removed the new container")
            if old is not None:
                self._bring_back(old)
                log.info("{} is back as {}", old_version, name)
        except CdError as exc:
            error = f"{failure.reason}; and restoring the old container failed: {exc}"
            log.error("could not restore the old container: {} (the next start reconciles)", exc)
            return (
                DeployReport("failed", version, old_version, error, failure.log_tail or None),
                failure.step,
                _failure_body(error, failure),
            )
        if old is not None:
            self._confirm_back(log, old, old_version)
        if failure.quarantine:
            self.state.quarantine(version, f"{failure.step}: {failure.reason}")
            log.warning("{} is quarantined: it will not be tried again unless forced", version)
        self.state.clear_journal()
        downtime = None if stopped_at is None else round(self._monotonic() - stopped_at, 3)
        outcome: Outcome = "rolled_back" if old is not None else "failed"
        report = DeployReport(
            outcome, version, old_version, failure.reason, failure.log_tail or None, None, 0.0, downtime
        )
        return report, failure.step, _failure_body(failure.reason, failure)

    # reconcile

    def _reconcile_if_interrupted(self) -> None:
        journal = self.state.journal
        if journal is not None:
            logger.warning("reconcile before deploying: {}", self._recover(journal))
        stale = self._close_stale_runs()
        if stale:
            logger.warning("reconcile before deploying: {}", stale)

    def _close_stale_runs(self) -> str:
        """Holding the deploy lock, a deploy run still ``running`` belongs to a process that died before its
        journal began (killed while pulling, say): the history must not show it running forever."""
        stale = self.runs.mark_unfinished_interrupted(kind="deploy")
        if not stale:
            return ""
        described = ", ".join(f"run {run.number} ({run.version or '?'})" for run in stale)
        return f"marked {described} interrupted: the agent stopped before the swap began"

    def _recover(self, journal: Journal) -> str:
        name = journal.container_name
        new = self.docker.container(journal.new_container_id) if journal.new_container_id else None
        if new is None:
            # Killed between `create` and writing its id: recognise it by our run label.
            candidate = self.docker.container(name)
            if candidate is not None and candidate.labels.get(LABEL_RUN) == str(journal.run):
                new = candidate
        old = self.docker.container(journal.old_container_id) if journal.old_container_id else None

        if journal.proven_healthy and new is not None:
            if not new.running:
                self.docker.start(new.id)
            if old is not None:
                self.docker.remove(old.id)
            previous = (
                Release(journal.old_version, journal.old_digest) if journal.old_version else self.state.current
            )
            self.state.record_deployed(Release(journal.version, journal.digest, new.id, self._clock()), previous)
            message = (
                f"finished the interrupted deploy of {journal.version}: it had been proven healthy, so it stays"
                + (f" and the old container ({journal.old_version}) was removed" if old is not None else "")
            )
        else:
            if new is not None:
                self.docker.remove(new.id)
            if old is not None:
                self._bring_back(old)
                message = (
                    f"undid the interrupted deploy of {journal.version} (reached {journal.phase!r},"
                    f" not proven healthy): removed the new container; {journal.old_version} is serving again as {name}"
                )
            else:
                message = (
                    f"undid the interrupted first deploy of {journal.version} (reached {journal.phase!r}):"
                    " removed its container; the next deploy starts again"
                )
            self.state.clear_journal()
            self._agree()
        if journal.run is not None:
            run = self.runs.get(journal.run)
            if run is not None and not run.finished:
                self.runs.update(journal.run, status="interrupted", finished_at=self._clock(), error=message)
        return message

    def _agree(self) -> str:
        """Make ``state.current`` name what the container called NAME runs."""
        name = self.settings.cd_container_name
        container = self.docker.container(name)
        current = self.state.current
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
            self.state.set_current(Release(version, digest, container.id, deployed_at))
            was = current.version if current else "nothing"
            return f"state said {was} but {name} runs {version} ({running}): state updated"
        return f"state agrees with the containers: {name} runs {version} ({running})"

    # helpers

    def _pull(self, log: loguru.Logger, version: str, digest: str | None) -> ImageInfo:
        reference = f"{self._repository}:{version}"
        local = self.docker.image(reference)
        if local is not None and digest is not None and local.digest_for(self._repository) == digest:
            log.info("{} is already here ({}); not pulling", reference, digest)
            return local
        auth = None
        if self.settings.registry_username and self.settings.registry_password:
            auth = {
                "username": self.settings.registry_username,
                "password": self.settings.registry_password.get_secret_value(),
            }
        log.info("pulling {} while the current container keeps serving", reference)
        try:
            return self.docker.pull(self._repository, version, auth=auth)
        except CdError as exc:
            if local is None:
                raise
            # A rollback must work while the registry is down: the previous image is kept locally.
            log.warning("pull failed ({}); using the local image {}", exc, reference)
            return local

    def _describe_old(self, log: loguru.Logger, old: ContainerInfo | None) -> tuple[str | None, str | None]:
        if old is None:
            log.info("no container named {}: first deploy", self.settings.cd_container_name)
            return None, None
        if old.labels.get(LABEL_MANAGED) == "true":
            return old.labels.get(LABEL_VERSION) or ADOPTED, old.labels.get(LABEL_DIGEST) or None
        tag = old.image.rpartition(":")[2] if ":" in old.image.rpartition("/")[2] else ""
        version = tag if parse_version(tag) is not None else ADOPTED
        log.info("adopting container {} (not created by pi-cicd, image {}) as the previous one", old.name, old.image)
        return version, None

    def _previous_release(
        self, old: ContainerInfo | None, old_version: str | None, old_digest: str | None, version: str
    ) -> Release | None:
        if old is not None and old_version is not None:
            current = self.state.current
            deployed_at = current.deployed_at if current and current.version == old_version else None
            return Release(old_version, old_digest, None, deployed_at)
        current = self.state.current
        if current is not None and current.version != version:
            return Release(current.version, current.digest, None, current.deployed_at)
        return self.state.previous

    def _confirm_back(self, log: loguru.Logger, old: ContainerInfo, old_version: str | None) -> None:
        # Wait until the restored app passes its health check before this deploy returns: otherwise the
        # watcher may swap in the next release at once, and back-to-back rollbacks leave the app
        # serving for only milliseconds between them (one long outage instead of short ones).
        try:
            verdict = self._health().wait(old.id)
        except CdError as exc:
            log.warning("could not check {} after restoring it: {}", old_version, exc)
            return
        if verdict.healthy:
            log.info("{} is serving again: {}", old_version, verdict.reason)
        else:
            log.warning("{} is back but not healthy: {}", old_version, verdict.reason)

    def _bring_back(self, old: ContainerInfo) -> None:
        name = self.settings.cd_container_name
        now = self.docker.container(old.id)
        if now is None:
            raise DeployError(f"the old container {old.id[:12]} is gone; nothing to bring back")
        if now.name != name:
            self.docker.rename(old.id, name)
        if not now.running:
            self.docker.start(old.id)

    def _free_name(self, wanted: str) -> str:
        name, number = wanted, 1
        while self.docker.container(name) is not None:
            number += 1
            name = f"{wanted}-{number}"
        return name

    def _journal(self, **changes: Any) -> None:
        self.state.update_journal(**changes)
        if "phase" in changes:
            self._phase(changes["phase"])

    def _phase(self, phase: Phase) -> None:
        if self._on_phase is not None:
            self._on_phase(phase)

    def _health(self) -> HealthChecker:
        return HealthChecker(
            self.docker,
            url=self.settings.cd_health_url,
            timeout=self.settings.cd_health_timeout,
            grace=self.settings.cd_health_grace,
        )

    def _tail(self, container: str) -> str:
        try:
            return self.docker.logs_tail(container, LOG_TAIL_LINES)
        except CdError as exc:
            return f"(could not read the container's log: {exc})"

    def _prune_images(self, log: loguru.Logger, current: str, previous: str | None) -> None:
        """Remove local tags of this repository older than the current release, except the previous one."""
        floor = parse_version(current)
        if floor is None:
            return
        keep = {current, previous}
        try:
            images = self.docker.images(self._repository)
        except CdError as exc:
            log.warning("could not list images to prune: {}", exc)
            return
        for image in images:
            for reference in image.tags:
                tag = reference.rpartition(":")[2]
                version = parse_version(tag)
                if tag in keep or version is None or version >= floor:
                    continue
                self._quietly(log, f"prune image {reference}", partial(self.docker.remove_image, reference))

    def _quietly(self, log: loguru.Logger, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except CdError as exc:
            log.warning("could not {}: {}", what, exc)
        else:
            log.info("done: {}", what)

    def _email(self, report: DeployReport, action: str, body: str, log_path: Path) -> Email:
        footer = f"\nRun {report.run}, {report.duration_s:.1f}s. Log: {log_path}\n"
        if report.outcome == "deployed":
            subject = f"deployed {report.version}" if action == "deploy" else f"rolled back to {report.version}"
        elif report.outcome == "rolled_back":
            subject = f"deploy of {report.version} failed: rolled back to {report.previous}"
        else:
            subject = f"{action} of {report.version} failed"
        return Email(subject=subject, body=body + footer)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        path = self.settings.state_dir / "deploy.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise DeployError("another deploy is in progress (the watcher or another cd-agent command)") from exc
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _failure_body(error: str, failure: _SwapFailed) -> str:
    parts = [f"Failed at {failure.step}: {error}\n"]
    if failure.quarantine:
        parts.append("The version is quarantined: it is not tried again until a newer release appears "
                     "(or `cd-agent deploy VERSION --force`).\n")
    if failure.output:
        parts.append(f"\nHealth check output:\n{failure.output}\n")
    if failure.log_tail:
        parts.append(f"\nLast {LOG_TAIL_LINES} lines of the new container's log:\n{failure.log_tail}\n")
    return "".join(parts)



def _version(release: Release | None) -> str | None:
    return None if release is None else release.version
