"""Wiring: every object the CD agent needs, built from ``CdSettings`` in one place.

The command line asks for what a command needs and no more: ``status`` opens only the state file;
``deploy`` and ``rollback`` also connect to Docker and the registry. ``watch`` builds an agent only in
its short-lived deploy process (``cd_agent.deploy_child``): the idle watcher never imports this module,
nor the Docker SDK, nor the web stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from loguru import logger

from cd_agent.candidate import newest_release
from cd_agent.deployer import Deployer
from cd_agent.docker_gateway import DockerGateway
from cd_agent.errors import DeployError, DockerUnavailable, NothingToDeploy
from cd_agent.fleet_platforms import FleetPlatformCheck
from cd_agent.platform_check import PlatformCheck
from cd_agent.proxy import DockerProxyEngine, ProxyController, ProxyStateFile
from cd_agent.report import DeployReport
from cd_agent.settings import CdSettings
from cd_agent.state import DeployState
from shared.notify import Notifier, notifier_from_settings
from shared.registry import RegistryClient
from shared.runstore import RunStore
from shared.versions import tags_of

# How long shutdown waits for a queued "deployed X" / failure email.
EMAIL_FLUSH_SECONDS = 30.0


@dataclass
class Agent:
    """The CD agent's objects, alive inside :func:`open_agent`."""

    settings: CdSettings
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
                self.registry.list_tags(), self.settings.constraint, quarantined, self.settings.cd_allow_prerelease
            )
            if version is None:
                raise NothingToDeploy(f"{self.settings.image.name} has no release to deploy{self._within()}")
        digest = self.registry.manifest_digest(version)
        if digest is None:
            # `deploy 1.3.0` when the release is tagged v1.3.0, and the reverse.
            other = next((tag for tag in tags_of(version, self.registry.list_tags()) if tag != version), None)
            if other is not None:
                version, digest = other, self.registry.manifest_digest(other)
        if digest is None:
            raise NothingToDeploy(f"{self.settings.image.with_tag(version)} does not exist in the registry")
        problem = None if force else self.platforms().problem(version, digest)
        if problem is not None:
            raise DeployError(f"{problem}: not deployed, nothing was pulled (--force tries anyway)", version=version)
        return self.deployer.deploy(version, digest=digest, force=force)

    def platforms(self) -> PlatformCheck:
        """What checks a release's platforms against this engine's (every node's under Swarm)."""
        swarm = getattr(self.deployer, "swarm", None)  # CD_STRATEGY=swarm: every node's platform counts
        if swarm is not None:
            return FleetPlatformCheck(self.docker.platform, swarm.node_platforms, self.registry)
        return PlatformCheck(self.docker.platform, self.registry)

    def _within(self) -> str:
        constraint = self.settings.constraint
        return f" within CD_VERSION_CONSTRAINT={constraint}" if constraint is not None else ""


def open_state(settings: CdSettings) -> DeployState:
    return DeployState(settings.state_path)


@contextmanager
def open_agent(settings: CdSettings, *, docker_away_fails_the_run: bool = False) -> Iterator[Agent]:
    """Build the agent; on exit wait for queued emails and close every connection.

    Docker out of reach raises ``DockerUnavailable``, unless ``docker_away_fails_the_run``: then the agent is
    built with a client that has not connected, and each Docker call fails inside the deploy's run (a failed
    run, its email, the watcher's backoff), as when Docker went away under a watcher connected since its start.
    """
    with ExitStack() as stack:
        state = stack.enter_context(open_state(settings))
        runs = stack.enter_context(RunStore(settings.runs_path))
        notifier = notifier_from_settings(settings)
        stack.callback(_close_notifier, notifier)
        registry = stack.enter_context(
            RegistryClient(settings.image, username=settings.registry_username, password=settings.registry_password)
        )
        docker = _docker_gateway(docker_away_fails_the_run, settings.cd_platform)
        stack.callback(docker.close)
        deployer = Deployer(settings, docker, state, runs, notifier, proxy=proxy_for(settings, docker))
        yield Agent(
            settings=settings, state=state, registry=registry, deployer=deployer, docker=docker, notifier=notifier
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


def proxy_for(settings: CdSettings, docker: DockerGateway) -> ProxyController | None:
    """The blue-green proxy (its upstream kept in STATE_DIR/proxy.json); None for the swap."""
    if settings.cd_strategy != "blue-green":
        return None
    return ProxyController(
        DockerProxyEngine(docker.client),
        ProxyStateFile(settings.state_dir / "proxy.json"),
        app=settings.cd_container_name,
        image=settings.cd_proxy_image,
        ports=settings.ports,
        grace_period_s=settings.cd_proxy_grace,
    )


def _close_notifier(notifier: Notifier) -> None:
    if not notifier.close(EMAIL_FLUSH_SECONDS):
        logger.warning("gave up waiting for emails still queued after {:g}s", EMAIL_FLUSH_SECONDS)
