"""The swap strategy (``CD_STRATEGY=swap``): replace the app container in place, prove the new one
healthy, or put the old one back. The old container is never removed before the new one is proven::

    pull (old serves) -> build the new container's spec (nothing touched yet)
      -> rename old to NAME-previous-X -> create new as NAME (its ports are bound only when it starts)
      -> stop old -> start new -> health verdict
      -> healthy:   remove old (its image stays), prune older images          -> "deployed"
      -> unhealthy: stop new, start old, then keep new's log tail, remove new,
                    rename old back, quarantine the version                   -> "rolled_back"

Users see an outage from the old container's stop until the new one listens: everything that can
happen before (pull, inspect, rename, create, the journal) does, and nothing but the engine's stop and
start calls sits between them (how the old one stopped is read after the start). A rollback likewise
stops the new one and starts the old one first, and reads the log, removes and renames after.

Each step is written to the state journal before it is taken (``on_phase`` is told after each entry),
so ``cd_agent.recovery`` can finish or undo a swap that was killed half-way. The one step not written
is ``old_stopped`` (between the stop and the start): a kill there finds the journal at ``created``,
which is undone alike. All
effects go through ``Engine`` and ``DeployState``; the outcome is a ``DeployReport``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cd_agent.container_spec import (
    LABEL_DIGEST,
    LABEL_MANAGED,
    LABEL_VERSION,
    ContainerSpec,
    build_spec,
    check_spec,
    networks_text,
    read_env_file,
)
from cd_agent.engine import ContainerInfo
from cd_agent.errors import CdError, EngineError
from cd_agent.health import HealthChecker, HealthVerdict
from cd_agent.images import fetch_image, prune_images
from cd_agent.recovery import bring_back
from cd_agent.report import DeployReport, Outcome
from cd_agent.state import Journal, Release
from cd_agent.stopping import log_stop, stop_outcome
from cd_agent.strategy import Attempt, DeployContext, StepFailure, StrategyBase, release_version
from shared.versions import parse_version

if TYPE_CHECKING:
    import loguru

# An unmanaged container whose image tag is not a version is still adopted, under this name.
ADOPTED = "adopted"


@dataclass
class _Attempt(Attempt):
    """What this swap has done so far: what restoring must undo."""

    stopped_at: float | None = None
    old_stopped: bool = False
    new_started: bool = False
    log_tail: str = ""


@dataclass(frozen=True)
class _Proven:
    new_id: str
    stopped_at: float
    verdict: HealthVerdict


class Swap(StrategyBase):
    """Deploys a release of ``target.image`` as ``target.container_name`` by swapping containers."""

    def __init__(self, context: DeployContext, *, health: Callable[[], HealthChecker]) -> None:
        super().__init__(context)
        self._health = health

    def deploy(self, log: loguru.Logger, version: str, digest: str | None, run: int) -> DeployReport:
        repository = self._target.image.name
        try:
            image = fetch_image(self._engine, self._target, log, version, digest)
        except CdError as exc:
            log.error("could not get the image: {}", exc)
            return DeployReport("failed", version, release_version(self._state.current), str(exc), failed_step="pull")
        digest = image.digest_for(repository) or digest
        try:
            old = self._engine.container(self._name)
            old_version, old_digest = self._describe_old(log, old)
            # Everything the new container needs is known before the first step: a bad CD_ENV_FILE, a
            # network that is gone, fail here, with the old container untouched.
            spec = build_spec(
                self._target, image=f"{repository}:{version}", version=version, digest=digest,
                env=read_env_file(self._target.env_file), old=old, run=run,
                old_image=self._engine.image(old.image_id) if old is not None else None,
            )
            check_spec(self._engine, spec)
        except CdError as exc:
            log.error("could not prepare the new container: {}", exc)
            return DeployReport(
                "failed", version, release_version(self._state.current), str(exc), failed_step="prepare"
            )
        self._state.begin_journal(Journal(
            version=version, container_name=self._name, phase="pulled", started_at=self._clock(), run=run,
            strategy=self._target.strategy,
            digest=digest, old_container_id=old.id if old else None, old_version=old_version, old_digest=old_digest,
        ))
        self._phase("pulled")
        attempt = _Attempt(version, digest, old, old_version, old_digest)
        result = self._replace(log, attempt, spec)
        if isinstance(result, StepFailure):
            return self._restore(log, attempt, result)
        return self._commit(log, attempt, result)

    def _replace(self, log: loguru.Logger, attempt: _Attempt, spec: ContainerSpec) -> _Proven | StepFailure:
        """The steps up to the verdict; a failure says at which step and whether it quarantines."""
        old, step = attempt.old, "rename"
        try:
            if old is not None:
                renamed = self._free_name(f"{self._name}-previous-{attempt.old_version}")
                self._journal(phase="old_renamed", old_renamed_to=renamed)
                self._engine.rename(old.id, renamed)
                log.info("renamed the running container {} to {} (it keeps serving)", self._name, renamed)
            step = "create"
            attempt.new_id = new_id = self._engine.create(spec)
            self._journal(phase="created", new_container_id=new_id)
            mounts = [m.target for m in spec.mounts]
            log.info("created container {} ({}) with mounts {} on {}", self._name, new_id[:12], mounts,
                     networks_text(spec))
            # The outage: from here until the new container listens. Only the engine's two calls.
            step = "stop"
            attempt.stopped_at = stopped_at = self._monotonic()
            if old is not None and old.running:
                self._engine.stop(old.id, timeout=self._target.stop_timeout)
                attempt.old_stopped = True
            stopped = self._monotonic()
            # Not journalled (a write here would lengthen the outage): the journal stays at "created",
            # which recovery undoes alike. The hook is still told, so tests can kill the agent here.
            self._phase("old_stopped")
            step = "start"
            self._engine.start(new_id)
            attempt.new_started = True
            started = self._monotonic()
            self._journal(phase="new_started")
            if attempt.old_stopped and old is not None:
                timeout = self._target.stop_timeout
                log_stop(log, f"the old container ({attempt.old_version})",
                         stop_outcome(self._engine, old.id, stopped - stopped_at), timeout=timeout,
                         init=self._target.init)
            log.info("started {} in {:.2f}s; health check (timeout {:g}s)", attempt.version, started - stopped,
                     self._target.health_timeout)
            step = "health"
            verdict = self._health().wait(new_id)
        except CdError as exc:
            # The engine refusing to start the release (a port in use, a bad entrypoint) is the
            # release's doing; an engine that went away, or a refused rename, is not.
            quarantine = step == "start" and isinstance(exc, EngineError)
            return StepFailure(step, str(exc), quarantine)
        if not verdict.healthy:
            return StepFailure("health", verdict.reason, True, output=verdict.output)
        return _Proven(new_id, stopped_at, verdict)

    def _commit(self, log: loguru.Logger, attempt: _Attempt, proven: _Proven) -> DeployReport:
        self._journal(phase="verdict", healthy=True)
        downtime = round(self._monotonic() - proven.stopped_at, 3)
        log.info("{} is healthy: {}", attempt.version, proven.verdict.reason)
        if attempt.old is not None:
            try:
                self._engine.remove(attempt.old.id)
            except CdError as exc:
                log.warning("could not remove the old container: {}", exc)
            else:
                log.info("done: remove the old container")
        previous = self._previous_release(attempt)
        self._state.record_deployed(Release(attempt.version, attempt.digest, proven.new_id, self._clock()), previous)
        previous_version = previous.version if previous else None
        prune_images(
            self._engine, self._target.image.name, log, attempt.version, previous_version,
            keep=self._context.siblings_keep(),
            keep_images=self._target.keep_images, quarantined=self._state.quarantined_versions,
        )
        return DeployReport(
            "deployed", attempt.version, previous_version, downtime_s=downtime, health=proven.verdict.reason,
            digest=attempt.digest,
        )

    def _restore(self, log: loguru.Logger, attempt: _Attempt, failure: StepFailure) -> DeployReport:
        version, old = attempt.version, attempt.old
        log.error("{} failed at {}: {}", version, failure.step, failure.reason)
        if failure.output:
            log.error("health check output:\n{}", failure.output)
        try:
            self._put_back(attempt)
            log_tail = attempt.log_tail
            if log_tail:
                log.error("last lines of the new container's log:\n{}", log_tail)
            if attempt.new_id is not None:
                log.info("removed the new container")
            if old is not None:
                log.info("{} is back as {}", attempt.old_version, self._name)
        except CdError as exc:
            log.error("could not restore the old container: {} (the next start reconciles)", exc)
            log_tail = attempt.log_tail or self._tail(attempt.new_id)
            return DeployReport(
                "failed", version, attempt.old_version,
                f"{failure.reason}; and restoring the old container failed: {exc}", log_tail or None,
                failed_step=failure.step, health_output=failure.output,
            )
        if old is not None:
            self._confirm_back(log, old, attempt.old_version)
        if failure.quarantine:
            self._state.quarantine(version, f"{failure.step}: {failure.reason}")
            log.warning("{} is quarantined: it will not be tried again unless forced", version)
        self._state.clear_journal()
        downtime = None if attempt.stopped_at is None else round(self._monotonic() - attempt.stopped_at, 3)
        outcome: Outcome = "rolled_back" if old is not None else "failed"
        return DeployReport(
            outcome, version, attempt.old_version, failure.reason, log_tail or None, downtime_s=downtime,
            failed_step=failure.step, quarantined=failure.quarantine, health_output=failure.output,
        )

    def _put_back(self, attempt: _Attempt) -> None:
        """The old container serving again as NAME, the new one gone, its log tail kept in ``attempt``.

        The second outage of a failed deploy lasts from stopping the new container to the old one
        listening again, so those two calls come first (the new one is killed at once: it failed);
        its log, its removal and the old one's name come after."""
        old, new_id = attempt.old, attempt.new_id
        if new_id is not None and attempt.new_started:
            try:
                self._engine.stop(new_id, timeout=0)
            except EngineError as exc:
                if exc.status != 404:  # gone already is what the stop was for
                    raise
        if old is not None and attempt.old_stopped:
            self._engine.start(old.id)
        attempt.log_tail = self._tail(new_id)
        if new_id is not None:
            self._engine.remove(new_id)
        if old is not None:
            bring_back(self._engine, old.id, self._name)

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

    def _describe_old(self, log: loguru.Logger, old: ContainerInfo | None) -> tuple[str | None, str | None]:
        if old is None:
            log.info("no container named {}: first deploy", self._name)
            return None, None
        if old.labels.get(LABEL_MANAGED) == "true":
            return old.labels.get(LABEL_VERSION) or ADOPTED, old.labels.get(LABEL_DIGEST) or None
        tag = old.image.rpartition(":")[2] if ":" in old.image.rpartition("/")[2] else ""
        version = tag if parse_version(tag) is not None else ADOPTED
        log.info("adopting container {} (not created by pi-cicd, image {}) as the previous one", old.name, old.image)
        return version, None

    def _previous_release(self, attempt: _Attempt) -> Release | None:
        current = self._state.current
        if attempt.old is not None and attempt.old_version is not None:
            deployed_at = current.deployed_at if current and current.version == attempt.old_version else None
            return Release(attempt.old_version, attempt.old_digest, None, deployed_at)
        if current is not None and current.version != attempt.version:
            return Release(current.version, current.digest, None, current.deployed_at)
        return self._state.previous

    def _free_name(self, wanted: str) -> str:
        name, number = wanted, 1
        while self._engine.container(name) is not None:
            number += 1
            name = f"{wanted}-{number}"
        return name
