"""Wiring: every object the CD agent needs for one app, built from its ``AppTarget`` in one place.

The command line asks for what a command needs and no more: ``status`` opens only the state file;
``deploy`` and ``rollback`` also connect to Docker and the registry. ``watch`` builds an agent only in
its short-lived deploy process (``cd_agent.deploy_child``): the idle watcher never imports this module,
nor the Docker SDK, nor the web stack.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from loguru import logger

from cd_agent.apps import AppPaths, AppTarget
from cd_agent.candidate import newest_release
from cd_agent.deployer import Deployer
from cd_agent.docker_gateway import DockerGateway
from cd_agent.errors import DeployError, DockerUnavailable, NothingToDeploy
from cd_agent.fleet_platforms import FleetPlatformCheck
from cd_agent.platform_check import PlatformCheck
from cd_agent.report import DeployReport
from cd_agent.settings import CdAgentSettings
from cd_agent.state import DeployState
from shared.disk import DiskFloor, engine_free_space
from shared.notify import Notifier, notifier_from_settings
from shared.registry import RegistryClient
from shared.runstore import RunStore
from shared.versions import tags_of

# How long shutdown waits for a queued "deployed X" / failure email.
EMAIL_FLUSH_SECONDS = 30.0


@dataclass
class Agent:
    """The CD agent's objects for one app, alive inside :func:`open_agent`."""

    settings: CdAgentSettings
    target: AppTarget
    state: DeployState
    registry: RegistryClient
    deployer: Deployer
    docker: DockerGateway
    notifier: Notifier

    def deploy(self, version: str | None, *, force: bool = False) -> DeployReport:
        """``cd-agent deploy [VERSION]``: the newest release inside the constraint when ``version`` is None.

        Raises ``NothingToDeploy`` when there is no such release or ``version`` is not a tag of the image, and
        ``DeployError`` when it has no image for this machine's platform (unless ``force``).
        """
        if version is None:
            quarantined = () if force else self.state.quarantined_versions
            version = newest_release(
                self.registry.list_tags(), self.target.constraint, quarantined, self.target.allow_prerelease
            )
            if version is None:
                raise NothingToDeploy(f"{self.target.image.name} has no release to deploy{self._within()}")
        digest = self.registry.manifest_digest(version)
        if digest is None:
            # `deploy 1.3.0` when the release is tagged v1.3.0, and the reverse.
            other = next((tag for tag in tags_of(version, self.registry.list_tags()) if tag != version), None)
            if other is not None:
                version, digest = other, self.registry.manifest_digest(other)
        if digest is None:
            raise NothingToDeploy(f"{self.target.image.with_tag(version)} does not exist in the registry")
        problem = None if force else self.platforms().problem(version, digest)
        if problem is not None:
            raise DeployError(f"{problem}: not deployed, nothing was pulled (--force tries anyway)", version=version)
        return self.deployer.deploy(version, digest=digest, force=force)

    def platforms(self) -> PlatformCheck:
        """What checks a release's platforms against this engine's (every node's under Swarm)."""
        swarm = self.deployer.swarm  # CD_STRATEGY=swarm: every node's platform counts
        if swarm is not None:
            return FleetPlatformCheck(self.docker.platform, swarm.node_platforms, self.registry)
        return PlatformCheck(self.docker.platform, self.registry)

    def _within(self) -> str:
        constraint = self.target.constraint
        return f" within CD_VERSION_CONSTRAINT={constraint}" if constraint is not None else ""


@contextmanager
def open_agent(
    settings: CdAgentSettings, target: AppTarget, *, siblings: Sequence[AppPaths] = (),
    docker_away_fails_the_run: bool = False,
) -> Iterator[Agent]:
    """Build the agent for ``target`` (``settings``: the agent-wide ones, with the app's ``notify_to``); on exit
    wait for queued emails and close every connection.

    Docker out of reach raises ``DockerUnavailable``, unless ``docker_away_fails_the_run``: then the agent is
    built with a client that has not connected, and each Docker call fails inside the deploy's run (a failed
    run, its email, the watcher's backoff), as when Docker went away under a watcher connected since its start.
    """
    with ExitStack() as stack:
        state = stack.enter_context(DeployState(target.paths.state))
        runs = stack.enter_context(RunStore(target.paths.runs))
        notifier = notifier_from_settings(settings)
        stack.callback(_close_notifier, notifier)
        registry = stack.enter_context(
            RegistryClient(target.image, username=target.registry_username, password=target.registry_password)
        )
        docker = _docker_gateway(docker_away_fails_the_run, target.platform)
        stack.callback(docker.close)
        deployer = Deployer(
            target, docker, state, runs, notifier, log_retention=settings.log_retention_runs, siblings=siblings,
            disk=DiskFloor(settings.disk_min_free, engine_free_space(docker.data_root)),
        )
        yield Agent(
            settings=settings, target=target, state=state, registry=registry, deployer=deployer, docker=docker,
            notifier=notifier,
        )


def _docker_gateway(unreachable_ok: bool, platform: str | None) -> DockerGateway:
    try:
        return DockerGateway.from_env(platform=platform)
    except DockerUnavailable:
        if not unreachable_ok:
            raise
    import docker

    # No version negotiation (it needs the engine): the SDK's default API version, for this one deploy.
    return DockerGateway(docker.DockerClient(
        **docker.utils.kwargs_from_env(), version=docker.constants.DEFAULT_DOCKER_API_VERSION, timeout=120
    ), platform=platform)


def _close_notifier(notifier: Notifier) -> None:
    if not notifier.close(EMAIL_FLUSH_SECONDS):
        logger.warning("gave up waiting for emails still queued after {:g}s", EMAIL_FLUSH_SECONDS)
