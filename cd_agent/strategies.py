"""``CD_STRATEGY``: the one table that says, per strategy, how to build it, recover it, check it, show it.

A new strategy is one module plus one row here. Every column imports its strategy's modules when it
is called: the settings and the idle watcher read the table without loading Docker's SDK (the
blue-green proxy and the Swarm modules need it), which only a deploy process does.

- ``build``: the strategy that deploys, from the deploy context and the deployer's parts;
- ``recovery``: what reconciles an interrupted deploy of that strategy (given the built strategy);
- ``check``: settings the strategy cannot work with, refused at start-up (``ValueError``, no Docker); it
  gets the app's fields validated so far (``cd_ports``, ``cd_networks``: text as the user wrote it);
- ``start_check``: what a command that deploys (``watch``, ``deploy``, ``rollback``) checks before
  anything else, outside the settings because it runs something (``compose config``): the setting it is
  about and the check (``ValueError`` saying what is wrong), or None. ``status`` never runs it (``doctor``
  has its own, fuller check: ``doctor``);
- ``status``: what ``cd-agent status`` adds for the strategy (the Swarm service), or None;
- ``adapters``: the strategy's real adapters (the blue-green proxy controller, the Swarm services), made
  from the app and the engine when the deployer was handed none (tests hand it fakes);
- ``runs_as``: what a deploy replaces, as the deploy log names it (a container, a service);
- ``proxy``: whether the strategy runs the proxy image (``CD_PROXY_IMAGE``), which ``doctor`` looks for;
- ``doctor``: the strategy's own ``cd-agent doctor`` check (the engine a swarm manager; compose and its
  files), given the app, the engine (None when unreachable) and whether lines name the app; or None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cd_agent.errors import CdError, DeployError

if TYPE_CHECKING:
    import loguru

    from cd_agent.apps import AppTarget
    from cd_agent.blue_green import Proxy
    from cd_agent.compose_project import ComposeRunner
    from cd_agent.docker_gateway import DockerGateway
    from cd_agent.engine import Engine
    from cd_agent.health import HealthChecker
    from cd_agent.report import DeployReport
    from cd_agent.state import Release
    from cd_agent.strategy import DeployContext
    from cd_agent.swarm_services import SwarmServices
    from shared.doctor import Finding
    from shared.runstore import RunStore


class Strategy(Protocol):
    """How a release replaces the running one; returns what happened."""

    def deploy(self, log: loguru.Logger, version: str, digest: str | None, run: int) -> DeployReport: ...


@runtime_checkable
class KnowsWhatRuns(Protocol):
    """A strategy that can tell that a release already runs where the deployer's own look (the container
    ``CD_CONTAINER_NAME`` with the release's label) cannot: compose's containers are compose's."""

    def already_runs(self, release: Release) -> bool: ...


class Reconciles(Protocol):
    """What the deployer asks of a strategy's recovery (``cd_agent.recovery.Recovery`` and its kin)."""

    def reconcile(self) -> str: ...

    def before_deploy(self) -> None: ...


@dataclass(frozen=True)
class Parts:
    """What the deployer hands a strategy besides the context: the health checker (for a URL), the runs,
    and the adapters only some strategies use (tests pass fakes)."""

    health: Callable[[str | None], HealthChecker]
    runs: RunStore
    proxy: Proxy | None = None
    swarm: SwarmServices | None = None
    compose: ComposeRunner | None = None


@dataclass(frozen=True)
class Adapters:
    """The adapters a strategy talks to besides the engine; None where the strategy needs none."""

    proxy: Proxy | None = None
    swarm: SwarmServices | None = None


def _no_adapters(target: AppTarget, engine: Engine) -> Adapters:
    return Adapters()


def _a_container(target: AppTarget) -> str:
    return f"container {target.container_name}"


@dataclass(frozen=True)
class StartCheck:
    """A strategy's check at the start of a command that deploys: ``run`` raises ValueError naming what is
    wrong with the setting ``field`` (``cd_compose_file``)."""

    field: str
    run: Callable[[AppTarget], None]


@dataclass(frozen=True)
class StrategyRow:
    build: Callable[[DeployContext, Parts], Strategy]
    recovery: Callable[[DeployContext, Parts, Strategy], Reconciles]
    check: Callable[[Mapping[str, Any]], None]
    status: Callable[[AppTarget], dict[str, Any]] | None = None
    adapters: Callable[[AppTarget, Engine], Adapters] = _no_adapters
    runs_as: Callable[[AppTarget], str] = _a_container
    proxy: bool = False
    # The watcher pulls a found release on the local engine while the deploy process starts (cd_agent.early_pull):
    # no use where the release runs on the swarm's nodes, which pull it themselves.
    pulls_locally: bool = True
    doctor: Callable[[AppTarget, DockerGateway | None, bool], Finding] | None = None
    start_check: StartCheck | None = None


def _build_swap(context: DeployContext, parts: Parts) -> Strategy:
    from cd_agent.swap import Swap

    url = context.target.health_url
    return Swap(context, health=lambda: parts.health(url))


def _recover_containers(context: DeployContext, parts: Parts, strategy: Strategy) -> Reconciles:
    from cd_agent.blue_green import BlueGreen
    from cd_agent.recovery import Recovery

    return Recovery(
        context.engine, context.state, parts.runs, name=context.target.container_name, clock=context.clock,
        strategy=strategy if isinstance(strategy, BlueGreen) else None,
    )


def _build_blue_green(context: DeployContext, parts: Parts) -> Strategy:
    from cd_agent.blue_green import BlueGreen

    if parts.proxy is None:
        raise DeployError("CD_STRATEGY=blue-green needs the proxy controller")
    return BlueGreen(context, parts.proxy, health=parts.health)


def _blue_green_adapters(target: AppTarget, engine: Engine) -> Adapters:
    """The proxy controller over the engine's own Docker client; its upstream kept in the app's ``proxy.json``."""
    from cd_agent.docker_gateway import DockerGateway
    from cd_agent.proxy import DockerProxyEngine, ProxyController, ProxyStateFile

    if not isinstance(engine, DockerGateway):
        raise DeployError("CD_STRATEGY=blue-green needs the proxy controller (none was given with this engine)")
    return Adapters(proxy=ProxyController(
        DockerProxyEngine(engine.client),
        ProxyStateFile(target.paths.proxy_state),
        app=target.container_name,
        image=target.proxy_image,
        ports=list(target.ports),
        grace_period_s=target.proxy_grace,
    ))


def _check_blue_green(fields: Mapping[str, Any]) -> None:
    # The proxy owns the ports: ports it cannot forward are refused now, not at the first deploy.
    from cd_agent.proxy_ports import proxied_ports
    from cd_agent.settings import parse_ports

    if "cd_ports" not in fields:
        return  # refused on its own
    try:
        proxied_ports(parse_ports(fields["cd_ports"]))
    except CdError as exc:
        raise ValueError(str(exc)) from exc


def _build_swarm(context: DeployContext, parts: Parts) -> Strategy:
    from cd_agent.swarm import SwarmDeploy

    return SwarmDeploy(context, _services(parts))


def _recover_swarm(context: DeployContext, parts: Parts, strategy: Strategy) -> Reconciles:
    from cd_agent.swarm import SwarmRecovery

    return SwarmRecovery(context, _services(parts), parts.runs)


def _services(parts: Parts) -> SwarmServices:
    if parts.swarm is None:
        raise DeployError("CD_STRATEGY=swarm needs the Swarm services")
    return parts.swarm


def _swarm_adapters(target: AppTarget, engine: Engine) -> Adapters:
    from cd_agent.swarm_services import DockerSwarm

    return Adapters(swarm=DockerSwarm.from_env())


def _swarm_status(target: AppTarget) -> dict[str, Any]:
    from cd_agent.swarm import service_status
    from cd_agent.swarm_services import DockerSwarm

    try:
        services = DockerSwarm.from_env()
        try:
            return service_status(services, target.service)
        finally:
            services.close()
    except CdError as exc:
        return {"name": target.service, "error": str(exc)}


def _refuse_networks(whose: str) -> Callable[[Mapping[str, Any]], None]:
    """The check of a strategy whose containers the agent does not create: CD_NETWORKS cannot apply."""

    def check(fields: Mapping[str, Any]) -> None:
        if str(fields.get("cd_networks") or "").strip():
            raise ValueError(f"CD_NETWORKS joins containers the agent creates (swap, blue-green); {whose}")

    return check


_check_swarm = _refuse_networks(
    "a Swarm service's networks are the service's own (docker service update --network-add)"
)
_check_compose = _refuse_networks("a compose service's networks are its compose file's")


def _build_compose(context: DeployContext, parts: Parts) -> Strategy:
    from cd_agent.compose import ComposeDeploy

    url = context.target.health_url
    return ComposeDeploy(context, _compose(parts), health=lambda: parts.health(url))


def _recover_compose(context: DeployContext, parts: Parts, strategy: Strategy) -> Reconciles:
    from cd_agent.compose import ComposeRecovery

    return ComposeRecovery(context, _compose(parts), parts.runs)


def _compose(parts: Parts) -> ComposeRunner:
    from cd_agent.compose_project import SubprocessCompose

    return parts.compose if parts.compose is not None else SubprocessCompose.detect()


def _check_compose_project(target: AppTarget) -> None:
    from cd_agent.compose_project import check_target

    check_target(target.compose_files, target.compose_service, target.compose_project, target.image.name)


def _compose_status(target: AppTarget) -> dict[str, Any]:
    from cd_agent.compose import project_of, service_status
    from cd_agent.docker_gateway import DockerGateway

    try:
        engine = DockerGateway.from_env()
        try:
            return service_status(engine, project_of(target))
        finally:
            engine.close()
    except CdError as exc:
        return {"name": target.compose_service, "error": str(exc)}


def _doctor_swarm(target: AppTarget, gateway: DockerGateway | None, labelled: bool) -> Finding:
    from cd_agent.doctor import swarm_finding

    return swarm_finding(target, gateway, labelled=labelled)


def _doctor_compose(target: AppTarget, gateway: DockerGateway | None, labelled: bool) -> Finding:
    from cd_agent.doctor import compose_finding

    return compose_finding(target, labelled=labelled)


def _no_check(fields: Mapping[str, Any]) -> None:
    return None


STRATEGIES: dict[str, StrategyRow] = {
    "swap": StrategyRow(build=_build_swap, recovery=_recover_containers, check=_no_check),
    "blue-green": StrategyRow(
        build=_build_blue_green, recovery=_recover_containers, check=_check_blue_green, adapters=_blue_green_adapters,
        proxy=True,
    ),
    "swarm": StrategyRow(
        build=_build_swarm, recovery=_recover_swarm, check=_check_swarm, status=_swarm_status,
        adapters=_swarm_adapters, runs_as=lambda target: f"swarm service {target.service}", doctor=_doctor_swarm,
        pulls_locally=False,
    ),
    # CdSettings checks that the compose files exist; `compose config` (start_check) only runs for a command
    # that runs compose, never for `status` (a Pi's status page must not wait for compose).
    "compose": StrategyRow(
        build=_build_compose, recovery=_recover_compose, check=_check_compose, status=_compose_status,
        start_check=StartCheck("cd_compose_file", _check_compose_project),
        runs_as=lambda target: f"compose service {target.compose_service} of project {target.compose_project}",
        doctor=_doctor_compose,
    ),
}
