"""``cd-agent doctor``: is this machine ready to run the CD agent? One finding per check (``shared/doctor.py``).

Checked, in order: the settings as ``cd-agent watch`` reads them (environment over ``.env``, and every
table of ``CD_APPS_FILE``); the Docker Engine (``DOCKER_HOST`` or the local socket) and its version; the
free space where it keeps its data (``DISK_MIN_FREE``); then for each app: that its registry login may
pull the image's repository (its tags listed, the newest release's manifest read with a HEAD: nothing
is pulled) and, for a blue-green app, that the proxy image (``CD_PROXY_IMAGE``) is on the engine; for a
swarm app, that the engine is a swarm manager and whether its service exists; for a compose app, which
compose is installed and that its files make a project whose service has an ``image:`` of ``CD_IMAGE``
(``compose config``); then this machine's clock against each registry's, and the mail server's login
when ``SMTP_HOST`` is set, once per distinct mail configuration of the apps (an app of the file may have
its own ``notify_to``). Nothing is deployed, pulled, mailed or written.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from contextlib import closing
from dataclasses import replace
from typing import TYPE_CHECKING

from cd_agent.apps import AppTarget, Targets, load_targets
from cd_agent.candidate import newest_release
from cd_agent.strategies import STRATEGIES
from shared.disk import engine_free_space
from shared.doctor import (
    Finding,
    Report,
    checked,
    clock_finding,
    disk_finding,
    docker_finding,
    email_finding,
    environment_secrets,
    fail,
    ok,
    open_client,
    registry_fix,
    settings_finding,
    warn,
)
from shared.settings import SharedSettings

if TYPE_CHECKING:
    from cd_agent.docker_gateway import DockerGateway


def diagnose(environ: Mapping[str, str]) -> Report:
    """Every check against ``environ`` (what ``read_environment`` gave), in order; never raises."""
    report = Report(secrets=environment_secrets(environ))
    loaded: list[Targets] = []

    def load() -> str:
        targets = load_targets(environ)
        loaded.append(targets)
        apps = "; ".join(f"{app.name} ({app.image.name}, {app.strategy})" for app in targets.apps)
        source = f"CD_APPS_FILE={targets.apps_file}" if targets.apps_file is not None else "the environment"
        return f"valid ({source}): {len(targets.apps)} app{'' if len(targets.apps) == 1 else 's'}: {apps}"

    settings_ok = report.add(settings_finding(load)).level != "FAIL"
    gateways: list[DockerGateway] = []
    engine = report.add(docker_finding("docker", lambda: _connect(gateways), "DOCKER_HOST"))
    if not settings_ok:
        _close(gateways)
        return report
    targets = loaded[0]
    report.secrets += targets.secret_values()
    gateway = gateways[0] if engine.level != "FAIL" and gateways else None
    try:
        if gateway is not None:
            report.add(disk_finding(targets.settings.disk_min_free, engine_free_space(gateway.data_root)))
        registries: dict[str, AppTarget] = {}
        labelled = targets.apps_file is not None
        for app in targets.apps:
            report.add(pull_finding(app, labelled=labelled))
            row = STRATEGIES[app.strategy]
            if row.proxy:
                report.add(proxy_image_finding(app, gateway, labelled=labelled))
            if row.doctor is not None:
                report.add(row.doctor(app, gateway, labelled))
            registries.setdefault(app.image.registry, app)
        for registry, app in registries.items():
            with open_client(app.image, None, None) as client:
                report.add(clock_finding(registry, client.server_date))
        for apps, settings in mail_configurations(targets):
            finding = email_finding(settings)
            if labelled:
                finding = replace(finding, check=f"{finding.check} [{', '.join(apps)}]")
            report.add(finding)
    finally:
        _close(gateways)
    return report


def _connect(gateways: list[DockerGateway]) -> str:
    """Reach the engine as the deploys do (``DOCKER_HOST`` or the local socket) and say which it is."""
    from cd_agent.docker_gateway import DockerGateway

    gateway = DockerGateway.from_env(timeout=15)
    gateways.append(gateway)
    return gateway.describe()


def _close(gateways: list[DockerGateway]) -> None:
    for gateway in gateways:
        gateway.close()


def _label(check: str, app: AppTarget, labelled: bool) -> str:
    return f"{check} [{app.name}]" if labelled else check


def pull_finding(app: AppTarget, *, labelled: bool = False) -> Finding:
    """The registry login may read the image's repository: its tags, and the newest release's manifest."""
    check = _label("registry", app, labelled)
    login = "registry_username / registry_password" if labelled else "REGISTRY_USERNAME / REGISTRY_PASSWORD"

    def run() -> Finding:
        with open_client(app.image, app.registry_username, app.registry_password) as client:
            tags = client.list_tags()
            if not tags:
                return fail(check, f"{app.image.name} has no tags: the repository does not exist (yet)",
                            "check the image name (registry host, owner, repository); if it is right, the CI "
                            "agent's first release creates it")
            newest = newest_release(tags, app.constraint, (), app.allow_prerelease)
            if newest is None:
                within = f" within CD_VERSION_CONSTRAINT {app.constraint}" if app.constraint is not None else ""
                return warn(check, f"{app.image.name} has {len(tags)} tag(s) but no release{within}",
                            "the watcher deploys release tags such as 1.2.3; push one (or widen the constraint)")
            digest = client.manifest_digest(newest)
        who = f"user {app.registry_username!r}" if app.registry_username else "anonymous access"
        if digest is None:
            return warn(check, f"{who} lists the tags of {app.image.name} but the manifest of {newest} is gone",
                        f"push {newest} again, or delete its tag")
        return ok(check, f"{who} may pull {app.image.name}: {len(tags)} tag(s), newest release {newest} "
                  f"({digest[:19]}…)")

    return checked(check, run, registry_fix(app.image, login=login, push=False))


def proxy_image_finding(app: AppTarget, gateway: DockerGateway | None, *, labelled: bool = False) -> Finding:
    """A blue-green app's proxy is created from ``CD_PROXY_IMAGE``, which is never pulled for it."""
    check = _label("proxy image", app, labelled)
    pull = f"docker pull {app.proxy_image}"
    setting = f"proxy_image of [apps.{app.name}]" if labelled else "CD_PROXY_IMAGE"
    if gateway is None:
        return fail(check, f"{app.proxy_image} not looked for: the Docker Engine is unreachable",
                    f"fix the Docker check above, then `{pull}` if it is missing")

    def run() -> Finding:
        image = gateway.image(app.proxy_image)
        if image is None:
            return fail(check, f"{app.proxy_image} is not on the engine: the first blue-green deploy cannot create "
                        "its proxy", f"`{pull}` (or set {setting} to an image the engine has)")
        return ok(check, f"{app.proxy_image} is on the engine ({image.id[:19]})")

    return checked(check, run, lambda exc: "see the Docker check above")


def mail_configurations(targets: Targets) -> list[tuple[list[str], SharedSettings]]:
    """The apps' distinct mail settings (each app's deploys mail with its own ``notify_to``), each with the
    names of the apps that use it, in the apps' order: one login check each, not one per app."""
    groups: dict[Hashable, tuple[list[str], SharedSettings]] = {}
    for app in targets.apps:
        settings = targets.settings_of(app)
        password = settings.smtp_password.get_secret_value() if settings.smtp_password is not None else None
        key = (settings.smtp_host, settings.smtp_port, settings.smtp_security, settings.smtp_username, password,
               settings.smtp_timeout, settings.notify_from, tuple(settings.notify_to))
        groups.setdefault(key, ([], settings))[0].append(app.name)
    return list(groups.values())


def swarm_finding(app: AppTarget, gateway: DockerGateway | None, *, labelled: bool = False) -> Finding:
    """A swarm app's service is created and updated through the engine, which must be a swarm manager."""
    check = _label("swarm", app, labelled)
    if gateway is None:
        return fail(check, f"service {app.service} not looked for: the Docker Engine is unreachable",
                    "fix the Docker check above")

    def run() -> Finding:
        from cd_agent.swarm_services import DockerSwarm

        role = gateway.swarm_role()
        if role != "manager":
            return fail(check, f"this engine is not a swarm manager ({role}): CD_STRATEGY=swarm creates and updates "
                        f"service {app.service}, which only a manager can",
                        "`docker swarm init` makes this machine a one-node swarm; or point DOCKER_HOST at a "
                        "manager node (see docs/cd/strategies.md)")
        with closing(DockerSwarm.from_env(timeout=15)) as services:
            service = services.service(app.service)
        if service is None:
            return ok(check, f"this engine is a swarm manager; no service {app.service} yet: the first deploy "
                      f"creates it ({app.replicas} replica(s))")
        replicas = "global" if service.replicas is None else f"{service.replicas} replica(s)"
        return ok(check, f"this engine is a swarm manager; service {app.service} runs {service.image} ({replicas})")

    return checked(check, run, lambda exc: "see the Docker check above")


def compose_finding(app: AppTarget, *, labelled: bool = False) -> Finding:
    """A compose app: compose is installed (which, which version) and ``compose config`` of its files has the
    app's service with an ``image:`` of ``CD_IMAGE``. Only ``version`` and ``config`` are run."""
    from cd_agent.compose import project_of
    from cd_agent.compose_project import CONFIG_TIMEOUT_S, SubprocessCompose, check_service

    check = _label("compose", app, labelled)
    setting = f"compose_file / compose_service of [apps.{app.name}]" if labelled else \
        "CD_COMPOSE_FILE / CD_COMPOSE_SERVICE"

    def run() -> Finding:
        runner = SubprocessCompose.detect()
        project = project_of(app)
        version = runner.run(["version", "--short"], cwd=project.cwd, timeout=CONFIG_TIMEOUT_S).strip()
        compose = f"{' '.join(runner.command)} {version}"
        try:
            check_service(project, app.image.name, runner)
        except ValueError as exc:
            return fail(check, f"{compose}: {exc}", f"correct the compose file or {setting}; "
                        f"`{' '.join(runner.command)} -f FILE config` shows the project as compose reads it")
        files = ", ".join(str(path) for path in project.files)
        return ok(check, f"{compose}; {files}: project {project.project}, service {project.service} runs an "
                  f"image of {app.image.name}")

    return checked(check, run, lambda exc: "install compose: Docker's compose plugin (`docker compose`) or "
                   "Debian's docker-compose (apt-get install docker-compose)")
