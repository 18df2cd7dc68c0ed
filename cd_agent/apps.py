"""The apps one ``cd-agent`` deploys: each an ``AppTarget`` (its settings as values) and its ``AppPaths``.

Parsed once, at start-up and at a reload (SIGHUP); nothing re-reads a setting during a poll or a deploy.

``CD_APPS_FILE`` names a TOML file with one ``[apps.NAME]`` table per app; every per-app ``CD_X``
setting is the key ``x`` of a table (same meaning, default and validation), and a table may also set
``notify_to``, ``registry_username`` and ``registry_password``. Agent-wide settings (``REGISTRY_*``,
``SMTP_*``, ``NOTIFY_*``, ``LOG_DIR``, ``STATE_DIR``, ``CD_MAX_PARALLEL_DEPLOYS``, ...) stay in the
environment. Without the file, the environment's ``CD_*`` settings are one app named after
``CD_CONTAINER_NAME``, whose state and logs stay where they always were (``STATE_DIR/cd.sqlite3``,
``LOG_DIR/``) so an agent upgraded in place keeps its versions and quarantine; an app of the file keeps
them in ``STATE_DIR/apps/NAME/`` and ``LOG_DIR/NAME/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr

from cd_agent.settings import (
    AGENT_WIDE_CD_FIELDS,
    CdAgentSettings,
    CdSettings,
    NetworkJoin,
    PortMapping,
    RestartPolicy,
    Strategy,
    VolumeMount,
    parse_networks,
    parse_ports,
    parse_volumes,
)
from shared.errors import SettingsError
from shared.settings import load_settings, validate_settings
from shared.targets_file import check_name, field_namer, read_targets_file, table_values

if TYPE_CHECKING:
    from shared.registry import ImageRef
    from shared.versions import Constraint

APPS_FILE = "CD_APPS_FILE"
SECTION = "apps"
# Agent-wide settings an app table may override: apps on Docker Hub and on another registry side by side.
UNPREFIXED_KEYS = ("notify_to", "registry_username", "registry_password")
SECRET_KEYS = ("registry_password",)
APP_KEYS: tuple[str, ...] = tuple(sorted(
    [name.removeprefix("cd_") for name in CdSettings.model_fields
     if name.startswith("cd_") and name not in AGENT_WIDE_CD_FIELDS] + list(UNPREFIXED_KEYS)
))
_PER_APP_FIELDS = frozenset(f"cd_{key}" for key in APP_KEYS if key not in UNPREFIXED_KEYS)
# Each CdSettings field an app table sets and its key: the reference pages and --help show them side by side.
FIELD_KEYS = {(key if key in UNPREFIXED_KEYS else f"cd_{key}"): key for key in APP_KEYS}


@dataclass(frozen=True)
class AppPaths:
    """Where an app's state and run logs live: its deploy state, run history, lock, proxy state and logs."""

    state_dir: Path
    log_dir: Path

    @property
    def state(self) -> Path:
        return self.state_dir / "cd.sqlite3"

    @property
    def runs(self) -> Path:
        return self.state_dir / "runs.sqlite3"

    @property
    def lock(self) -> Path:
        return self.state_dir / "deploy.lock"

    @property
    def proxy_state(self) -> Path:
        return self.state_dir / "proxy.json"

    @classmethod
    def of_app(cls, settings: CdAgentSettings, name: str) -> AppPaths:
        """``STATE_DIR/apps/NAME/`` and ``LOG_DIR/NAME/``: an app of the apps file."""
        return cls(settings.state_dir / "apps" / name, settings.log_dir / name)

    @classmethod
    def legacy(cls, settings: CdAgentSettings) -> AppPaths:
        """``STATE_DIR/`` and ``LOG_DIR/``: the one app of the environment, where its state always was."""
        return cls(settings.state_dir, settings.log_dir)


@dataclass(frozen=True)
class AppTarget:
    """One app: what to deploy, how, and where its state goes. Values, parsed once."""

    name: str
    image: ImageRef
    container_name: str
    strategy: Strategy
    ports: tuple[PortMapping, ...]
    volumes: tuple[VolumeMount, ...]
    networks: tuple[NetworkJoin, ...]
    env_file: Path | None
    restart_policy: RestartPolicy
    poll_interval: float
    health_url: str | None
    health_timeout: float
    health_grace: float
    stop_timeout: float
    proxy_image: str
    proxy_grace: float
    init: bool
    platform: str | None  # CD_PLATFORM ("linux/arm64"); None: the engine's own
    constraint: Constraint | None
    allow_prerelease: bool
    keep_images: int  # CD_KEEP_IMAGES: the app's healthy releases kept on disk for a rollback
    service: str
    replicas: int
    update_parallelism: int
    update_order: Literal["start-first", "stop-first"]
    update_failure_action: Literal["rollback", "pause", "continue"]
    compose_files: tuple[Path, ...]
    compose_service: str
    compose_project: str
    registry_username: str | None
    registry_password: SecretStr | None
    notify_to: tuple[str, ...]
    paths: AppPaths

    @property
    def registry_auth(self) -> dict[str, str] | None:
        """The pull credentials as the Docker API takes them, or None."""
        if self.registry_username and self.registry_password:
            return {"username": self.registry_username, "password": self.registry_password.get_secret_value()}
        return None

    @property
    def runs_as(self) -> str:
        """What the deploy replaces, as its log names it: the strategy's runtime object."""
        from cd_agent.strategies import STRATEGIES

        return STRATEGIES[self.strategy].runs_as(self)

    def describe(self) -> str:
        """``web (registry/me/web, blue-green)``: how the watcher's log names the app."""
        return f"{self.name} ({self.image.name}, {self.strategy})"


@dataclass(frozen=True)
class Targets:
    """The agent-wide settings and every app, in the order the file lists them."""

    settings: CdAgentSettings
    apps: tuple[AppTarget, ...]
    apps_file: Path | None = None

    def app(self, name: str | None) -> AppTarget:
        """The app called ``name``; with one app, ``name`` may be None. ``SettingsError`` otherwise."""
        if name is None:
            if len(self.apps) == 1:
                return self.apps[0]
            raise SettingsError(f"{len(self.apps)} apps are configured ({self.names()}): say which with --app NAME")
        for app in self.apps:
            if app.name == name:
                return app
        raise SettingsError(f"no app named {name!r}: the configured apps are {self.names()}")

    def names(self) -> str:
        return ", ".join(app.name for app in self.apps)

    def settings_of(self, app: AppTarget) -> CdAgentSettings:
        """The agent-wide settings with the app's own ``notify_to`` and registry login: what its deploy
        process is handed (its notifier sends there; its secrets are redacted from its log)."""
        return self.settings.model_copy(update={
            "notify_to": app.notify_to, "registry_username": app.registry_username,
            "registry_password": app.registry_password,
        })

    def siblings(self, app: AppTarget) -> tuple[AppPaths, ...]:
        """The paths of the other apps of ``app``'s image: its image pruning keeps what they run."""
        return tuple(other.paths for other in self.apps if other.name != app.name and other.image == app.image)

    def secret_values(self) -> list[str]:
        """Every secret of the agent and of its apps, for the log redactor."""
        values = self.settings.secret_values()
        values += [app.registry_password.get_secret_value() for app in self.apps if app.registry_password]
        return [value for value in values if value]


def app_target(settings: CdSettings, name: str, paths: AppPaths) -> AppTarget:
    """The validated settings of one app as values."""
    return AppTarget(
        name=name,
        image=settings.image,
        container_name=settings.cd_container_name,
        strategy=settings.cd_strategy,  # type: ignore[arg-type]  # checked by CdSettings
        ports=tuple(parse_ports(settings.cd_ports)),
        volumes=tuple(parse_volumes(settings.cd_volumes)),
        networks=tuple(parse_networks(settings.cd_networks)),
        env_file=settings.cd_env_file,
        restart_policy=settings.cd_restart_policy,
        poll_interval=settings.cd_poll_interval,
        health_url=settings.cd_health_url,
        health_timeout=settings.cd_health_timeout,
        health_grace=settings.cd_health_grace,
        stop_timeout=settings.cd_stop_timeout,
        proxy_image=settings.cd_proxy_image,
        proxy_grace=settings.cd_proxy_grace,
        init=settings.cd_init,
        platform=settings.cd_platform,
        constraint=settings.constraint,
        allow_prerelease=settings.cd_allow_prerelease,
        keep_images=settings.cd_keep_images,
        service=settings.cd_service or settings.cd_container_name,
        replicas=settings.cd_replicas,
        update_parallelism=settings.cd_update_parallelism,
        update_order=settings.cd_update_order,
        update_failure_action=settings.cd_update_failure_action,
        **_compose_values(settings),
        registry_username=settings.registry_username,
        registry_password=settings.registry_password,
        notify_to=settings.notify_to,
        paths=paths,
    )


def _compose_values(settings: CdSettings) -> dict[str, Any]:
    """CD_COMPOSE_*: the files, the service (default CD_CONTAINER_NAME), the project (default compose's own)."""
    from cd_agent.compose_project import default_project, split_files

    files = split_files(settings.cd_compose_file) if settings.cd_compose_file else ()
    return {
        "compose_files": files,
        "compose_service": settings.cd_compose_service or settings.cd_container_name,
        "compose_project": settings.cd_compose_project or (default_project(files[0]) if files else ""),
    }


def single_target(settings: CdSettings) -> AppTarget:
    """The one app the environment defines (no apps file), named after ``CD_CONTAINER_NAME``."""
    name = check_name(settings.cd_container_name.lower(), "CD_CONTAINER_NAME: the app")
    return app_target(settings, name, AppPaths.legacy(settings))


def load_targets(environ: Mapping[str, str]) -> Targets:
    """Every app of this agent from the environment (and ``CD_APPS_FILE``), or one ``SettingsError``."""
    if not environ.get(APPS_FILE, "").strip():
        settings = load_settings(CdSettings, environ)
        return Targets(settings, (single_target(settings),))
    agent = load_settings(CdAgentSettings, environ)
    per_app = sorted(name.upper() for name in _PER_APP_FIELDS if environ.get(name.upper(), "").strip())
    if per_app:
        raise SettingsError(
            f"{', '.join(per_app)} set in the environment while {APPS_FILE} names an apps file: "
            "per-app settings go in the file's [apps.NAME] tables"
        )
    path = agent.cd_apps_file or Path(environ[APPS_FILE])
    return Targets(agent, read_apps(agent, path, environ), path)


def check_at_start(targets: Targets) -> Targets:
    """Each app's strategy's ``start_check`` (``compose config``), for a command about to deploy: one
    ``SettingsError`` (exit 2) naming the app's setting, as a bad setting is; ``targets`` when all pass."""
    from cd_agent.strategies import STRATEGIES

    for app in targets.apps:
        start_check = STRATEGIES[app.strategy].start_check
        if start_check is None:
            continue
        try:
            start_check.run(app)
        except ValueError as exc:
            raise SettingsError(f"invalid settings: {setting_name(targets, app, start_check.field)}: {exc}") from None
    return targets


def setting_name(targets: Targets, app: AppTarget, field: str) -> str:
    """How the user wrote ``field`` of ``app``: ``CD_COMPOSE_FILE``, or ``[apps.web] compose_file``."""
    if targets.apps_file is None:
        return field.upper()
    return field_namer(SECTION, app.name, "cd_", APP_KEYS)(field)


def read_apps(agent: CdAgentSettings, path: Path, environ: Mapping[str, str]) -> tuple[AppTarget, ...]:
    """The apps of ``path`` validated over the agent-wide settings in ``environ``."""
    tables = read_targets_file(path, setting=APPS_FILE, section=SECTION, keys=APP_KEYS, secret_keys=SECRET_KEYS)
    shared: dict[str, Any] = {
        name: environ[name.upper()] for name in CdSettings.model_fields
        if name not in _PER_APP_FIELDS and name.upper() in environ
    }
    apps = []
    for table in tables:
        values = {**shared, "cd_container_name": table.name, **table_values("cd_", table, UNPREFIXED_KEYS)}
        name_of = field_namer(SECTION, table.name, "cd_", APP_KEYS)
        try:
            settings = validate_settings(CdSettings, values, name_of=name_of)
        except SettingsError as exc:
            raise SettingsError(f"{APPS_FILE}={str(path)!r}: {exc}") from None
        apps.append(app_target(settings, table.name, AppPaths.of_app(agent, table.name)))
    _refuse_clashes(path, apps)
    return tuple(apps)


def _refuse_clashes(path: Path, apps: list[AppTarget]) -> None:
    """Two apps cannot be the same container, nor publish the same host port."""
    seen: dict[str, str] = {}
    for app in apps:
        what = [f"container {app.container_name}"] + [
            f"host port {port.host_ip or '*'}:{port.host_port}/{port.protocol}"
            for port in app.ports if port.host_port is not None
        ]
        for item in what:
            if item in seen:
                raise SettingsError(
                    f"{APPS_FILE}={str(path)!r}: [apps.{app.name}] and [apps.{seen[item]}] both use {item}"
                )
            seen[item] = app.name
