"""The compose strategy (``CD_STRATEGY=compose``): the app is a service of the user's compose project::

    get the image (pinned by digest; the service keeps serving)
      -> pin the service to IMAGE:X.Y.Z@sha256:... (the agent's pin file) -> compose up -d --no-deps SERVICE
      -> health verdict of every container of the service (replicas included), today's rules
      -> healthy:   keep the pin, prune older images                                   -> "deployed"
      -> unhealthy: the previous pin written back, the same up (compose recreates the
                    previous release), quarantine                                      -> "rolled_back"

``--no-deps`` and naming the one service keep compose's hands off the other services (the database is
never recreated, restarted or created by a deploy). Containers are found by compose's labels
(``com.docker.compose.project``/``.service``), never by name: compose 1.29 calls them ``project_web_1``,
v2 ``project-web-1``.

The journal (``pulled`` before the pin is written, with the previous pin kept in ``old_renamed_to``;
``created`` after ``up``; ``verdict`` once proven) lets ``ComposeRecovery`` finish or undo a deploy whose
agent was killed: proven healthy stays, anything earlier gets the previous pin back and the same ``up``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cd_agent.compose_project import (
    LABEL_ONEOFF,
    LABEL_PROJECT,
    LABEL_SERVICE,
    PIN_FILE,
    ComposeError,
    ComposeProject,
    ComposeRunner,
)
from cd_agent.engine import ContainerInfo, Engine
from cd_agent.errors import CdError, DeployError
from cd_agent.health import HealthChecker
from cd_agent.images import ADOPTED, digest_of, fetch_pinned, prune_images, version_of
from cd_agent.recovery import Recovery
from cd_agent.report import DeployReport, Outcome
from cd_agent.state import Journal, Release
from cd_agent.strategy import DeployContext, StepFailure, StrategyBase, log_failure, release_version
from shared.runstore import RunStore

if TYPE_CHECKING:
    import loguru

    from cd_agent.apps import AppTarget

def project_of(target: AppTarget) -> ComposeProject:
    """The app's compose project, its pin file in the app's state folder."""
    return ComposeProject(
        files=target.compose_files, service=target.compose_service, project=target.compose_project,
        pin=target.paths.state_dir / PIN_FILE,
    )


def service_status(engine: Engine, project: ComposeProject) -> dict[str, Any]:
    """For ``cd-agent status``: the service's containers (replicas), the version each runs, in the swarm's shape."""
    containers = service_containers(engine, project)
    pin = project.pinned_image()
    return {
        "name": f"{project.service} (compose project {project.project})", "exists": bool(containers),
        "replicas": len(containers), "version": version_of(pin) if pin else "the compose file's image",
        "update_state": None, "pin": str(project.pin) if pin else None,
        "tasks": [
            {"slot": number, "version": version_of(c.image), "node": c.name, "error": None,
             "state": c.status + (f" ({c.health_status})" if c.health_status else "")}
            for number, c in enumerate(containers, 1)
        ],
    }


def service_containers(engine: Engine, project: ComposeProject) -> list[ContainerInfo]:
    """Every container of the service (running or not, replicas included), by compose's labels, oldest name first."""
    found = engine.containers(label=f"{LABEL_PROJECT}={project.project}")
    return sorted(
        (c for c in found if c.labels.get(LABEL_SERVICE) == project.service
         and c.labels.get(LABEL_ONEOFF, "False") != "True"),
        key=lambda c: c.name,
    )


@dataclass(frozen=True)
class _Before:
    """What ran before the deploy: the pin (None: the user's files alone) and the service's containers."""

    pin: str | None
    containers: tuple[ContainerInfo, ...]
    version: str | None
    digest: str | None


class ComposeDeploy(StrategyBase):
    """Deploys a release of ``target.image`` as the service ``CD_COMPOSE_SERVICE`` of the user's project."""

    def __init__(
        self, context: DeployContext, runner: ComposeRunner, *, health: Callable[[], HealthChecker]
    ) -> None:
        super().__init__(context)
        self._runner = runner
        self._health = health
        self._project = project_of(context.target)
        self._name = self._project.service

    def already_runs(self, release: Release) -> bool:
        """The pin names ``release`` (its digest too, when known) and every container of the service runs it:
        deploying it again would only recreate them (``KnowsWhatRuns``)."""
        pin = self._project.pinned_image()
        if pin is None or version_of(pin) != release.version:
            return False
        if release.digest is not None and digest_of(pin) != release.digest:
            return False
        try:
            containers = service_containers(self._engine, self._project)
        except CdError:
            return False  # the deploy itself says what is wrong with the engine
        return bool(containers) and all(c.running and c.image == pin for c in containers)

    def deploy(self, log: loguru.Logger, version: str, digest: str | None, run: int) -> DeployReport:
        repository = self._target.image.name
        current = release_version(self._state.current)
        try:
            image_info, digest = fetch_pinned(self._engine, self._target, log, version, digest,
                                              why="the compose pin needs one")
        except CdError as exc:
            log.error("could not get the image: {}", exc)
            return DeployReport("failed", version, current, str(exc), failed_step="pull")
        pin = f"{repository}:{version}@{digest}"
        try:
            compose_version = self._project.config(self._runner).get("version")
            before = self._before()
        except CdError as exc:
            log.error("could not read the compose project: {}", exc)
            return DeployReport("failed", version, current, str(exc), failed_step="prepare")
        self._state.begin_journal(Journal(
            version=version, container_name=self._name, phase="pulled", started_at=self._clock(), run=run,
            strategy=self._target.strategy, digest=digest, old_version=before.version, old_digest=before.digest,
            old_renamed_to=before.pin,
        ))
        self._phase("pulled")
        log.info("service {} of project {} runs {}: pinning it to {}", self._name, self._project.project,
                 before.version or "nothing", pin)
        started = self._monotonic()
        try:
            self._project.write_pin(pin, version=_text(compose_version))
            self._project.up(self._runner)
        except (CdError, OSError) as exc:
            refused = StepFailure("up", str(exc), isinstance(exc, ComposeError))
            return self._restore(log, version, before, refused, _text(compose_version), started)
        self._journal(phase="created")
        log.info("compose recreated service {} with {} in {:.2f}s; health check (timeout {:g}s)", self._name,
                 version, self._monotonic() - started, self._target.health_timeout)
        failure, reasons = self._verdict(image_info.id)
        if failure is not None:
            return self._restore(log, version, before, failure, _text(compose_version), started)
        self._journal(phase="verdict", healthy=True)
        log.info("{} is healthy: {}", version, reasons)
        previous = self._previous(before, version)
        self._state.record_deployed(Release(version, digest, None, self._clock()), previous)
        previous_version = release_version(previous)
        prune_images(self._engine, repository, log, version, previous_version, keep=self._context.siblings_keep(),
            keep_images=self._target.keep_images, quarantined=self._state.quarantined_versions,
        )
        return DeployReport(
            "deployed", version, previous_version, downtime_s=round(self._monotonic() - started, 3),
            health=reasons, digest=digest,
        )

    def _before(self) -> _Before:
        pin = self._project.pinned_image()
        containers = tuple(service_containers(self._engine, self._project))
        image = pin or (containers[0].image if containers else None)
        if image is None:
            return _Before(None, containers, None, None)
        return _Before(pin, containers, version_of(image) or ADOPTED, digest_of(image))

    def _verdict(self, image_id: str) -> tuple[StepFailure | None, str]:
        """Every container of the service runs the release and passes the health check."""
        try:
            containers = service_containers(self._engine, self._project)
            if not containers:
                return StepFailure("health", f"compose up left no container of service {self._name}", True), ""
            stale = [c.name for c in containers if c.image_id != image_id]
            if stale:
                return StepFailure("health", f"not running the release after compose up: {', '.join(stale)}",
                                   True), ""
            reasons = []
            for container in containers:
                verdict = self._health().wait(container.id)
                if not verdict.healthy:
                    reason = f"{container.name}: {verdict.reason}"
                    return StepFailure("health", reason, True, self._tail(container.id), verdict.output), ""
                reasons.append(f"{container.name}: {verdict.reason}")
        except CdError as exc:
            return StepFailure("health", str(exc), False), ""
        return None, "; ".join(reasons)

    def _restore(
        self, log: loguru.Logger, version: str, before: _Before, failure: StepFailure, compose_version: str | None,
        started: float,
    ) -> DeployReport:
        log_failure(log, version, failure)
        try:
            put_back(self._project, self._runner, before.pin, bool(before.containers), compose_version)
        except (CdError, OSError) as exc:
            log.error("could not put the previous release back: {} (the next start reconciles)", exc)
            return DeployReport(
                "failed", version, before.version, f"{failure.reason}; and putting back the previous release"
                f" failed: {exc}", failure.log_tail or None, failed_step=failure.step, health_output=failure.output,
            )
        if before.containers:
            log.info("{} is back: service {} pinned to {} again", before.version, self._name,
                     before.pin or "the compose files' own image")
            self._confirm_back(log, before.version)
        else:
            log.info("removed the service's containers (there were none before this deploy)")
        if failure.quarantine:
            self._state.quarantine(version, f"{failure.step}: {failure.reason}")
            log.warning("{} is quarantined: it will not be tried again unless forced", version)
        self._state.clear_journal()
        outcome: Outcome = "rolled_back" if before.containers else "failed"
        return DeployReport(
            outcome, version, before.version, failure.reason, failure.log_tail or None,
            downtime_s=round(self._monotonic() - started, 3), failed_step=failure.step,
            quarantined=failure.quarantine, health_output=failure.output,
        )

    def _confirm_back(self, log: loguru.Logger, old_version: str | None) -> None:
        # As the swap does: the watcher must not start the next deploy before the previous release serves.
        try:
            for container in service_containers(self._engine, self._project):
                verdict = self._health().wait(container.id)
                if not verdict.healthy:
                    log.warning("{} is back but {} is not healthy: {}", old_version, container.name, verdict.reason)
                    return
        except CdError as exc:
            log.warning("could not check {} after putting it back: {}", old_version, exc)
            return
        log.info("{} is serving again", old_version)

    def _previous(self, before: _Before, version: str) -> Release | None:
        if before.version is not None and before.version != version:
            current = self._state.current
            deployed_at = current.deployed_at if current and current.version == before.version else None
            return Release(before.version, before.digest, None, deployed_at)
        current = self._state.current
        if current is not None and current.version != version:
            return current
        return self._state.previous


def put_back(
    project: ComposeProject, runner: ComposeRunner, pin: str | None, had_containers: bool,
    compose_version: str | None,
) -> None:
    """The previous pin written back and the same ``up``; a service that had no container before is removed."""
    project.write_pin(pin, version=compose_version)
    if had_containers:
        project.up(runner)
    else:
        runner.run([*project.args(), "rm", "-s", "-f", project.service], cwd=project.cwd, timeout=120)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


class ComposeRecovery(Recovery):
    """Crash safety for the compose strategy: a journal left by a killed agent is finished or undone
    (``Recovery.reconcile`` calls this class's ``recover`` and ``agree``)."""

    def __init__(self, context: DeployContext, runner: ComposeRunner, runs: RunStore) -> None:
        super().__init__(context.engine, context.state, runs, name=context.target.compose_service,
                         clock=context.clock)
        self._project = project_of(context.target)
        self._runner = runner

    def recover(self, journal: Journal) -> str:
        if journal.strategy not in (None, "compose"):
            raise DeployError(
                f"an interrupted deploy of {journal.version} belongs to CD_STRATEGY={journal.strategy}: start"
                " the agent with the strategy it was deployed with to finish it"
            )
        if journal.proven_healthy:
            previous = Release(journal.old_version, journal.old_digest) if journal.old_version else None
            self._state.record_deployed(Release(journal.version, journal.digest, None, self._clock()), previous)
            message = f"finished the interrupted deploy of {journal.version}: it had been proven healthy, so it stays"
        else:
            compose_version = self._project.config(self._runner).get("version")
            put_back(self._project, self._runner, journal.old_renamed_to, journal.old_version is not None,
                     _text(compose_version))
            self._state.clear_journal()
            back = journal.old_version or "nothing"
            message = (
                f"undid the interrupted deploy of {journal.version} (reached {journal.phase!r}, not proven healthy):"
                f" service {self._project.service} is pinned to {back} again"
            )
            self.agree()
        if journal.run is not None:
            run = self._runs.get(journal.run)
            if run is not None and not run.finished:
                self._runs.update(journal.run, status="interrupted", finished_at=self._clock(), error=message)
        return message

    def agree(self) -> str:
        """Make ``state.current`` name what the service's containers run."""
        service = self._project.service
        containers = service_containers(self._engine, self._project)
        if not containers:
            return f"no container of service {service} in project {self._project.project}; the next deploy starts it"
        image = self._project.pinned_image() or containers[0].image
        version = version_of(image) or ADOPTED
        current = self._state.current
        if current is None or current.version != version:
            deployed_at = current.deployed_at if current and current.version == version else None
            self._state.set_current(Release(version, digest_of(image), None, deployed_at))
            was = current.version if current else "nothing"
            return f"state said {was} but service {service} runs {version}: state updated"
        return f"state agrees with compose: service {service} runs {version}"
