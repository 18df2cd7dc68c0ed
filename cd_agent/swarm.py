"""The swarm strategy (``CD_STRATEGY=swarm``): the app is a Docker Swarm service and Swarm does the rollout::

    get the image (pinned by digest) -> no service: create it from the CD target, wait for its replicas
                                     -> a service:  service update to IMAGE:X.Y.Z@sha256:DIGEST (only the
                                                    image changes), follow its UpdateStatus
      -> completed:                                  "deployed"
      -> rollback_completed / paused / timed out:    the failing task (node, error, log tail), quarantine

Swarm holds the desired state, so a deploy is journalled (``DeployState`` journal: ``pulled`` before the
service is touched, ``created`` after) and ``SwarmRecovery`` finishes the bookkeeping of a deploy whose
agent was killed: it reads the service's UpdateStatus and closes the run, the state and the quarantine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from loguru import logger

from cd_agent.container_spec import LABEL_MANAGED, read_env_file
from cd_agent.errors import CdError
from cd_agent.images import ADOPTED, digest_of, fetch_pinned, version_of
from cd_agent.recovery import Recovery
from cd_agent.report import LOG_TAIL_LINES, DeployReport, Outcome
from cd_agent.state import DeployState, Journal, Release
from cd_agent.strategy import DeployContext, StrategyBase, release_version
from cd_agent.swarm_services import (
    UPDATE_DONE,
    UPDATE_FAILED,
    ServiceMount,
    ServicePort,
    ServiceSpec,
    SwarmServices,
    TaskInfo,
)
from shared.runstore import RunStore

if TYPE_CHECKING:
    import loguru

    from cd_agent.apps import AppTarget

# CD_RESTART_POLICY in Swarm's words: Swarm has no "unless-stopped" (a scaled-down service stays down).
RESTART_CONDITIONS = {"unless-stopped": "any", "always": "any", "on-failure": "on-failure", "no": "none"}
_POLL_S = 0.5


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    state: str | None = None
    failing: TaskInfo | None = None


class SwarmDeploy(StrategyBase):
    """Deploys a release of ``target.cd_image`` as the Swarm service ``CD_SERVICE``."""

    def __init__(self, context: DeployContext, services: SwarmServices) -> None:
        super().__init__(context)
        self._services = services
        self._name = context.target.service

    def deploy(self, log: loguru.Logger, version: str, digest: str | None, run: int) -> DeployReport:
        repository = self._target.image.name
        current = release_version(self._state.current)
        try:
            _, digest = fetch_pinned(self._engine, self._target, log, version, digest, why="Swarm needs a pinned image")
        except CdError as exc:
            log.error("could not get the image: {}", exc)
            return DeployReport("failed", version, current, str(exc), failed_step="pull")
        image = f"{repository}:{version}@{digest}"
        try:
            service = self._services.service(self._name)
            spec = self._spec(image) if service is None else None
        except CdError as exc:
            log.error("could not prepare the service: {}", exc)
            return DeployReport("failed", version, current, str(exc), failed_step="prepare")
        old_version = version_of(service.image) if service else None
        old_digest = digest_of(service.image) if service else None
        self._state.begin_journal(Journal(
            version=version, container_name=self._name, phase="pulled", started_at=self._clock(), run=run,
            strategy=self._target.strategy,
            digest=digest, old_container_id=service.id if service else None, old_version=old_version,
            old_digest=old_digest, old_renamed_to=service.update_started_at if service else None,
        ))
        self._phase("pulled")
        try:
            if spec is not None:
                log.info("no service named {}: creating it ({} replicas)", self._name, spec.replicas)
                service_id = self._services.create(spec, auth=self._auth())
            elif service is not None:
                log.info("service {} runs {}: updating its image to {}", self._name, service.image, image)
                self._services.update_image(self._name, image, auth=self._auth())
                service_id = service.id
        except CdError as exc:
            log.error("Swarm refused the service: {}", exc)
            self._state.clear_journal()
            return DeployReport("failed", version, current, str(exc), failed_step="update")
        self._journal(phase="created", new_container_id=service_id)
        log.info("following Swarm's rollout of {}", version)
        journal = self._state.journal
        if journal is None:
            raise CdError("the deploy journal vanished during the rollout")
        return finish(self._target, self._services, self._state, journal, log, clock=self._clock,
                      monotonic=self._monotonic, sleep=self._sleep)

    def _spec(self, image: str) -> ServiceSpec:
        target = self._target
        env = [f"{key}={value}" for key, value in read_env_file(target.env_file).items()]
        ports = []
        for port in target.ports:
            if port.host_port is None:
                raise CdError(
                    f"CD_PORTS: a Swarm service publishes fixed ports; give a host port for {port.container_port}"
                )
            ports.append(ServicePort(port.container_port, port.host_port, port.protocol))
        mounts = [ServiceMount(v.source, v.target, v.read_only, v.is_named) for v in target.volumes]
        return ServiceSpec(
            name=self._name, image=image, replicas=target.replicas, env=env, ports=ports, mounts=mounts,
            restart_condition=RESTART_CONDITIONS[target.restart_policy], labels={LABEL_MANAGED: "true"},
            update_parallelism=target.update_parallelism, update_order=target.update_order,
            update_monitor_s=target.health_timeout, update_failure_action=target.update_failure_action,
        )

    def _auth(self) -> dict[str, str] | None:
        return self._target.registry_auth


def finish(
    target: AppTarget,
    services: SwarmServices,
    state: DeployState,
    journal: Journal,
    log: loguru.Logger,
    *,
    clock: Callable[[], datetime],
    monotonic: Callable[[], float],
    sleep: Callable[[float], None],
) -> DeployReport:
    """Wait for Swarm's verdict on the journalled deploy, then write it down (state, quarantine, journal)."""
    version = journal.version
    image = f"{target.image.name}:{version}@{journal.digest}"
    first = journal.old_container_id is None
    # An update is the one started after the journal's note of the previous one (kept in old_renamed_to).
    verdict = _wait(target, services, image, first=first, before=journal.old_renamed_to,
                    monotonic=monotonic, sleep=sleep)
    previous_version = journal.old_version or release_version(state.current)
    if verdict.ok:
        log.info("{} is rolled out: {}", version, verdict.reason)
        if journal.old_version is not None:
            previous: Release | None = Release(journal.old_version, journal.old_digest)
        else:
            current = state.current
            previous = current if current is not None and current.version != version else state.previous
        state.record_deployed(Release(version, journal.digest, journal.new_container_id, clock()), previous)
        state.clear_journal()
        return DeployReport(
            "deployed", version, release_version(previous), health=verdict.reason, digest=journal.digest
        )
    failing, tail = _describe(services, verdict.failing)
    reason = verdict.reason + (f"; failing task: {failing}" if failing else "")
    log.error("{} failed: {}", version, reason)
    if tail:
        log.error("last lines of the failing task's container log:\n{}", tail)
    state.quarantine(version, f"swarm: {reason}")
    log.warning("{} is quarantined: it will not be tried again unless forced", version)
    state.clear_journal()
    rolled_back = not first and verdict.state in ("rollback_completed", "rollback_paused")
    outcome: Outcome = "rolled_back" if rolled_back else "failed"
    return DeployReport(
        outcome, version, previous_version, reason, tail or None, failed_step="health", quarantined=True,
        health=verdict.reason,
    )


def _wait(
    target: AppTarget,
    services: SwarmServices,
    image: str,
    *,
    first: bool,
    before: str | None,
    monotonic: Callable[[], float],
    sleep: Callable[[float], None],
) -> Verdict:
    replicas = target.replicas
    window = target.health_timeout + target.health_grace
    deadline = monotonic() + (replicas + 1) * 2 * window + 60
    # Swarm names the task that made it roll back only while rolling back ("update rolled back due to
    # failure or early termination of task ID"); once done its message is just "rollback completed".
    why = ""
    while True:
        service = services.service(target.service)
        if service is None:
            return Verdict(False, f"the service {target.service} disappeared during the rollout")
        tasks = services.tasks(service.name)
        if first or service.update_started_at is None or service.update_started_at == before:
            # A created service (or an update Swarm has not begun): its replicas are the verdict.
            wanted = service.replicas or 1
            running = [t for t in tasks if t.image == image and t.state == "running" and t.desired_state == "running"]
            if service.update_started_at in (None, before) and len(running) >= wanted and service.image == image:
                return Verdict(True, f"{len(running)} of {wanted} replicas running {image.rpartition('@')[0]}")
        else:
            state = service.update_state
            if state not in (None, UPDATE_DONE, "updating") and "task" in service.update_message:
                why = service.update_message
            if state == UPDATE_DONE and service.image == image:
                return Verdict(True, f"Swarm completed the update: {service.update_message or 'done'}", state)
            if state in UPDATE_FAILED or (state == UPDATE_DONE and service.image != image):
                because = f" ({why})" if why and why != service.update_message else ""
                return Verdict(False, f"Swarm says {state}: {service.update_message}{because}", state,
                               _failing(tasks, image, why))
        if monotonic() > deadline:
            return Verdict(False, f"no verdict from Swarm in time (update state {service.update_state})",
                           service.update_state, _failing(tasks, image, why))
        sleep(_POLL_S)


def _failing(tasks: list[TaskInfo], image: str, why: str = "") -> TaskInfo | None:
    named = [t for t in tasks if t.id and t.id in why]
    if named:
        return named[0]
    bad = [t for t in tasks if t.image == image and (t.error or t.state in ("failed", "rejected"))]
    if not bad:
        # Stopped by Swarm for failing its health check, a task ends "complete" without an error.
        bad = [t for t in tasks if t.image == image and t.container_id and t.state != "running"]
    return max(bad, key=lambda t: t.timestamp) if bad else None


def _describe(services: SwarmServices, task: TaskInfo | None) -> tuple[str, str]:
    if task is None:
        return "", ""
    text = f"task {task.id[:12]} (slot {task.slot}) on node {task.node}: {task.state}: {task.error or task.message}"
    if task.container_id is None:
        return text, ""
    try:
        health = services.health(task.container_id)
        if health:
            text += f"; health check: {health}"
        return text, services.logs_tail(task.container_id, LOG_TAIL_LINES)
    except CdError as exc:
        return text, f"(could not read the container's log from this node: {exc})"


class SwarmRecovery(Recovery):
    """Crash safety for the swarm strategy: a journal left by a killed agent is finished from Swarm's word."""

    def __init__(self, context: DeployContext, services: SwarmServices, runs: RunStore) -> None:
        super().__init__(context.engine, context.state, runs, name=context.target.service, clock=context.clock)
        self._target = context.target
        self._services = services
        self._monotonic = context.monotonic
        self._sleep = context.sleep

    def reconcile(self) -> str:
        journal = self._state.journal
        message = self.recover(journal) if journal is not None else self.agree()
        stale = self.close_stale_runs()
        if stale:
            message += f"; {stale}"
        logger.info("reconcile: {}", message)
        return message

    def recover(self, journal: Journal) -> str:
        service = self._services.service(journal.container_name)
        image = f"{self._target.image.name}:{journal.version}@{journal.digest}"
        if journal.phase == "pulled" and (service is None or (service.image != image and
                                                              service.update_started_at == journal.old_renamed_to)):
            # Killed before Swarm was told: nothing to finish.
            self._state.clear_journal()
            message = f"the interrupted deploy of {journal.version} had not reached Swarm; the next deploy starts again"
            self._close_run(journal, "interrupted", message)
            return message
        if service is not None and journal.new_container_id is None:
            self._state.update_journal(new_container_id=service.id)
            journal = self._state.journal or journal
        report = finish(self._target, self._services, self._state, journal, logger, clock=self._clock,
                        monotonic=self._monotonic, sleep=self._sleep)
        if report.outcome == "deployed":
            message = f"finished the interrupted deploy of {journal.version}: Swarm completed it"
            self._close_run(journal, "succeeded", None)
        else:
            message = f"finished the interrupted deploy of {journal.version}: {report.error} (quarantined)"
            self._close_run(journal, "failed", report.error)
        return message

    def agree(self) -> str:
        service = self._services.service(self._name)
        if service is None:
            return f"no service named {self._name}; the next deploy creates it"
        version = version_of(service.image) or ADOPTED
        current = self._state.current
        if current is None or current.version != version:
            self._state.set_current(Release(version, digest_of(service.image), service.id, None))
            was = current.version if current else "nothing"
            return f"state said {was} but service {self._name} runs {version}: state updated"
        return f"state agrees with Swarm: service {self._name} runs {version}"

    def _close_run(self, journal: Journal, status: str, error: str | None) -> None:
        if journal.run is None:
            return
        run = self._runs.get(journal.run)
        if run is not None and not run.finished:
            self._runs.update(journal.run, status=status, finished_at=self._clock(), error=error)



def service_status(services: SwarmServices, name: str) -> dict[str, object]:
    """For ``cd-agent status``: the service's replicas, the version each running task runs, and its node."""
    service = services.service(name)
    if service is None:
        return {"name": name, "exists": False, "replicas": None, "tasks": []}
    tasks = sorted(
        (t for t in services.tasks(name) if t.desired_state == "running"), key=lambda t: (t.slot or 0, t.timestamp)
    )
    return {
        "name": name, "exists": True, "replicas": service.replicas, "version": version_of(service.image),
        "update_state": service.update_state,
        "tasks": [
            {"slot": t.slot, "version": version_of(t.image), "node": t.node, "state": t.state, "error": t.error}
            for t in tasks
        ],
    }
