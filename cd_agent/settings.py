"""The CD agent's settings: ``CD_*`` variables over the shared ones.

``CD_PORTS`` and ``CD_VOLUMES`` use docker's own short syntax and are parsed here, once, into small
value objects (``PortMapping``, ``VolumeMount``), so a typo stops the agent at start-up with a
message naming the variable and the bad part instead of failing at the first deploy::

    CD_PORTS="8080:80,127.0.0.1:8443:443/tcp,[::1]:5353:53/udp"
    CD_VOLUMES="data:/data,/srv/cfg:/cfg:ro"

``CD_NETWORKS`` (``NetworkJoin``) names existing networks a container the agent creates joins, each with
the aliases it answers to there (with blue-green the proxy answers to them, ``cd_agent.stack_aliases``)::

    CD_NETWORKS="shop_default:web:shop-web,monitoring"
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from shared.platforms import parse_platform
from shared.settings import SharedSettings, shown

if TYPE_CHECKING:
    from shared.registry import ImageRef
    from shared.versions import Constraint

RestartPolicy = Literal["unless-stopped", "always", "on-failure", "no"]
Strategy = Literal["swap", "blue-green", "swarm", "compose"]
Protocol = Literal["tcp", "udp", "sctp"]

# docker's own rules (daemon/names.go); a name that breaks them fails only at `docker create`.
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_VOLUME_NAME = _CONTAINER_NAME
_PORT_SPEC = re.compile(
    r"^(?:(?P<ip>\[[0-9a-fA-F:.]+\]|[0-9a-zA-Z.-]+):)?"
    r"(?:(?P<host>[0-9]*):)?(?P<container>[0-9]+)(?:/(?P<proto>[a-z]+))?$"
)
_PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp", "sctp")


@dataclass(frozen=True)
class PortMapping:
    """One published port: ``host_ip:host_port -> container_port/protocol``.

    ``host_ip`` None means every interface (docker's default); ``host_port`` None lets docker pick one.
    """

    host_ip: str | None
    host_port: int | None
    container_port: int
    protocol: Protocol = "tcp"

    @property
    def container_key(self) -> str:
        """``"80/tcp"``: the key the Docker API uses for the container side."""
        return f"{self.container_port}/{self.protocol}"

    def __str__(self) -> str:
        host = f"{self.host_ip}:" if self.host_ip else ""
        host += f"{self.host_port}:" if self.host_port is not None else ""
        return f"{host}{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class VolumeMount:
    """One volume: a named volume (``is_named``) or a bind-mounted host path, at ``target``."""

    source: str
    target: str
    read_only: bool = False
    is_named: bool = True

    def __str__(self) -> str:
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True)
class NetworkJoin:
    """An existing network the app's container joins (``CD_NETWORKS``), and its aliases there."""

    name: str
    aliases: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ":".join((self.name, *self.aliases))


def _port(text: str, part: str) -> int:
    number = int(text)
    if not 0 < number < 65536:
        raise ValueError(f"{part!r}: port {number} is not between 1 and 65535")
    return number


def parse_port(part: str) -> PortMapping:
    """``[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`` as in ``docker run -p``; ValueError names the part."""
    match = _PORT_SPEC.match(part)
    if match is None:
        raise ValueError(f"{part!r} is not [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]")
    ip, host, container, proto = match.group("ip", "host", "container", "proto")
    if ip is not None and host is None:
        # "8080:80" matches ip="8080", container="80": the first number is the host port.
        if ip.isdigit():
            ip, host = None, ip
        else:
            raise ValueError(f"{part!r}: a host IP needs a host port too (IP:HOST_PORT:CONTAINER_PORT)")
    if ip is not None:
        ip = ip.strip("[]")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"{part!r}: {ip!r} is not an IP address to publish on") from None
    protocol = proto or "tcp"
    if protocol not in _PROTOCOLS:
        raise ValueError(f"{part!r}: protocol {protocol!r} is not one of tcp, udp, sctp")
    return PortMapping(
        host_ip=ip,
        host_port=_port(host, part) if host else None,
        container_port=_port(container, part),
        protocol=protocol,
    )


def parse_ports(text: str) -> list[PortMapping]:
    """Comma-separated ``-p`` specs; an empty text publishes nothing."""
    mappings = [parse_port(part.strip()) for part in text.split(",") if part.strip()]
    seen: set[tuple[str | None, int, str]] = set()
    for mapping in mappings:
        if mapping.host_port is None:
            continue
        key = (mapping.host_ip, mapping.host_port, mapping.protocol)
        if key in seen:
            raise ValueError(f"host port {mapping.host_port}/{mapping.protocol} is published twice")
        seen.add(key)
    return mappings


def parse_volume(part: str) -> VolumeMount:
    """``SOURCE:TARGET[:ro|rw]``: SOURCE an absolute host path (bind mount) or a volume name."""
    pieces = part.split(":")
    if len(pieces) not in (2, 3) or not all(pieces):
        raise ValueError(f"{part!r} is not SOURCE:TARGET[:ro|rw]")
    source, target = pieces[0], pieces[1]
    mode = pieces[2] if len(pieces) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise ValueError(f"{part!r}: mode {mode!r} is not ro or rw")
    if not target.startswith("/"):
        raise ValueError(f"{part!r}: the container path {target!r} must be absolute")
    is_named = not source.startswith("/")
    if is_named and not _VOLUME_NAME.match(source):
        raise ValueError(
            f"{part!r}: {source!r} is neither an absolute host path nor a volume name "
            "(letters, digits, '_', '.', '-'); relative host paths are not accepted"
        )
    return VolumeMount(source=source, target=target, read_only=mode == "ro", is_named=is_named)


def parse_volumes(text: str) -> list[VolumeMount]:
    """Comma-separated ``-v`` specs; an empty text mounts nothing."""
    mounts = [parse_volume(part.strip()) for part in text.split(",") if part.strip()]
    target = _repeated(mount.target for mount in mounts)
    if target is not None:
        raise ValueError(f"container path {target!r} is mounted twice")
    return mounts


def _repeated(values: Iterable[str]) -> str | None:
    """The first value given twice, if any."""
    seen: set[str] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


# Network modes that are not networks to join beside others; the default bridge is one, without aliases.
_NOT_JOINABLE = ("host", "none")
_NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_ALIAS = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def parse_network(part: str) -> NetworkJoin:
    """``NAME[:ALIAS[:ALIAS...]]``; ValueError names the part."""
    name, *aliases = part.split(":")
    if not _NETWORK_NAME.match(name):
        raise ValueError(f"{part!r}: {name!r} is not a network name (letters, digits, '_', '.', '-')")
    if name in _NOT_JOINABLE:
        raise ValueError(f"{part!r}: the {name!r} network mode is not a network to join beside others")
    for alias in aliases:
        if not _ALIAS.match(alias):
            raise ValueError(f"{part!r}: {alias!r} is not an alias (letters, digits, '_', '.', '-')")
    if name == "bridge" and aliases:
        raise ValueError(f"{part!r}: the default bridge network has no aliases; use a network of your own")
    return NetworkJoin(name, tuple(dict.fromkeys(aliases)))


def parse_networks(text: str) -> list[NetworkJoin]:
    """Comma-separated ``NAME[:ALIAS...]``; an empty text joins nothing."""
    joins = [parse_network(part.strip()) for part in text.split(",") if part.strip()]
    name = _repeated(join.name for join in joins)
    if name is not None:
        raise ValueError(f"network {name!r} is named twice (give all its aliases in one entry)")
    return joins


def read_env_text(path: Path) -> str:
    """The text of ``CD_ENV_FILE``; ValueError saying where it is not UTF-8 (docker reads it as UTF-8 too)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None


# CdSettings fields that are the agent's, not an app's: an apps file cannot set them.
AGENT_WIDE_CD_FIELDS = frozenset({
    "cd_apps_file", "cd_max_parallel_deploys", "cd_dashboard_host", "cd_dashboard_port", "cd_dashboard_token",
    "cd_hook_token", "cd_hook_min_interval", "cd_state_flush_interval",
})
# Tokens typed into a browser's prompt or a registry's webhook URL: long enough not to be guessed.
TOKEN_MIN_LENGTH = 16
# A hook token sits in a URL path: letters, digits and the URL-safe punctuation only.
_HOOK_TOKEN = re.compile(r"^[A-Za-z0-9._~-]+$")


class CdAgentSettings(SharedSettings):
    """The agent-wide settings: the shared ones plus ``CD_APPS_FILE``, ``CD_MAX_PARALLEL_DEPLOYS`` and the
    listener's (``CD_DASHBOARD_*``, ``CD_HOOK_*``; cd_agent/listener.py)."""

    cd_apps_file: Path | None = Field(
        default=None,
        description="a TOML file with one `[apps.NAME]` table per app (see \"Many apps from one agent\"); unset: "
        "the per-app `CD_*` variables are the one app",
    )
    cd_max_parallel_deploys: int = Field(
        default=1,
        description="how many apps may deploy at the same time (the others keep polling and wait for a slot)",
    )
    # The status page, /metrics and the registry hook: loopback by default, like the CI dashboard.
    cd_dashboard_host: str = Field(
        default="127.0.0.1",
        description="where the CD listener (status page, `/metrics`, the registry hook) listens; see \"The CD "
        "listener\"",
    )
    cd_dashboard_port: int = Field(default=8002, description="the CD listener's port")
    # Set: every page asks for it (Bearer, or a Basic password), and may be read beyond loopback.
    cd_dashboard_token: SecretStr | None = Field(
        default=None,
        description="secret, 16 characters or more: every page then needs it (Bearer, or a Basic password) and "
        "may be read beyond loopback; unset: the pages answer only this machine, to loopback host names and "
        "`CD_DASHBOARD_HOST`",
    )
    # Set: POST /hooks/registry/<token> exists (a push notification is a hint to poll at once).
    cd_hook_token: SecretStr | None = Field(
        default=None,
        description="secret, 16 characters or more (letters, digits, `.`, `_`, `~`, `-`): "
        "`POST /hooks/registry/<CD_HOOK_TOKEN>` takes registry push notifications as a hint to poll now; unset: "
        "the route does not exist",
    )
    cd_hook_min_interval: float = Field(
        default=5.0,
        description="seconds: at most one early poll per app in that time, whatever the number of notifications",
    )
    # Seconds between writes of the watcher's poll bookkeeping (last/next poll, last error): an idle poll
    # writes nothing to the SD card; 0 writes it at every poll (cd_agent/state.py).
    cd_state_flush_interval: float = Field(
        default=900.0,
        description="seconds between writes of the watcher's poll bookkeeping (last/next poll, last error) to "
        "`STATE_DIR`; an idle poll writes nothing; `0` writes every poll; deploys and quarantines are written at "
        "once whatever it says",
    )

    log_dir: Path = Path("logs/cd")
    state_dir: Path = Path("state/cd")

    @field_validator("cd_max_parallel_deploys")
    @classmethod
    def _parallel(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be 1 or more")
        return value

    @field_validator("cd_dashboard_host")
    @classmethod
    def _dashboard_host(cls, value: str) -> str:
        value = value.strip()
        if not value or any(char.isspace() or char in "/@" for char in value):
            raise ValueError("must be an address or host name to listen on, e.g. 127.0.0.1")
        return value

    @field_validator("cd_dashboard_port")
    @classmethod
    def _dashboard_port(cls, value: int) -> int:
        if not 0 < value < 65536:
            raise ValueError("must be a TCP port between 1 and 65535")
        return value

    @field_validator("cd_dashboard_token", "cd_hook_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return value
        text = value.get_secret_value()
        if len(text) < TOKEN_MIN_LENGTH:
            raise ValueError(
                f"must be at least {TOKEN_MIN_LENGTH} characters, e.g. the output of `openssl rand -hex 32`"
            )
        if info.field_name == "cd_hook_token" and not _HOOK_TOKEN.match(text):
            raise ValueError("must be letters, digits, '.', '_', '~' or '-' (it is a part of a URL path)")
        if info.field_name == "cd_dashboard_token" and (not text.isprintable() or text != text.strip()):
            raise ValueError("must be printable text without spaces at either end (a browser's password prompt)")
        return value

    @field_validator("cd_hook_min_interval")
    @classmethod
    def _hook_interval(cls, value: float) -> float:
        if not value >= 0 or value == float("inf"):
            raise ValueError("must be a number of seconds, 0 or more")
        return value

    @field_validator("cd_state_flush_interval")
    @classmethod
    def _flush_interval(cls, value: float) -> float:
        if not value >= 0 or value == float("inf"):
            raise ValueError("must be a number of seconds, 0 or more (0 writes the poll bookkeeping at every poll)")
        return value


class CdSettings(CdAgentSettings):
    """One app's settings (``CD_*`` of the environment, or an ``[apps.NAME]`` table) over the agent's;
    see DESIGN.md for the variables. ``cd_agent.apps.AppTarget`` holds them as parsed values."""

    cd_image: str = Field(description="the image to watch, without a tag, e.g. `docker.io/owner/app`")
    cd_container_name: str = Field(
        description="the app container's name", json_schema_extra=shown("required (in an apps file: `NAME`)")
    )
    cd_ports: str = Field(
        default="",
        description="published ports, comma-separated `[HOST_IP:]HOST:CONTAINER[/udp]`, e.g. "
        "`8080:80,127.0.0.1:8443:443`",
        json_schema_extra=shown("none", value="comma-separated list"),
    )
    cd_env_file: Path | None = Field(
        default=None,
        description="an env file (`KEY=value` lines, UTF-8) for the app container; checked at start-up and again "
        "before each deploy",
    )
    cd_volumes: str = Field(
        default="",
        description="comma-separated `NAME:/path` (named volume) or `/host/path:/path[:ro]` (bind mount)",
        json_schema_extra=shown("none", value="comma-separated list"),
    )
    cd_networks: str = Field(
        default="",
        description="existing networks a container the agent creates joins, comma-separated "
        "`name[:alias[:alias...]]`, e.g. `shop:web,monitoring`; added to the networks the old container was on "
        "(see \"An app and its database\"); with `blue-green` the aliases are the proxy's, each colour answers "
        "to its own name there; not with `swarm` or `compose` (their networks are the service's own)",
        json_schema_extra=shown("none", value="comma-separated list"),
    )
    cd_restart_policy: RestartPolicy = Field(
        default="unless-stopped", description="`unless-stopped`, `always`, `on-failure` or `no`"
    )
    cd_strategy: str = Field(
        default="swap",
        description="how a release replaces the running one: `swap` (stop the old container, start the new one, "
        "see \"What a deploy does\"), `blue-green` (HTTP apps: start the new one beside the old one behind a "
        "proxy, switch when healthy, see \"Deploy strategies\"), `swarm` (a Swarm service update, see \"From one "
        "Pi to a fleet\") or `compose` (a service of your compose project, see \"An app and its database, with "
        "compose\")",
    )
    cd_poll_interval: float = Field(default=60.0, description="seconds between polls (a little jitter is added)")
    cd_health_url: str | None = Field(
        default=None,
        description="a URL that must answer 2xx when the image has no `HEALTHCHECK` (blue-green asks its path of "
        "the new container itself, before any user reaches it)",
    )
    cd_health_timeout: float = Field(default=60.0, description="seconds a new container has to become healthy")
    cd_health_grace: float = Field(
        default=5.0, description="seconds a container without any health check must keep running"
    )
    cd_stop_timeout: float = Field(
        default=10.0, description="seconds the old container gets to stop before it is killed"
    )
    cd_proxy_image: str = Field(
        default="caddy:2",
        description="blue-green: the proxy's image (Caddy); `scripts/proxy-image` builds one without Docker Hub",
    )
    cd_proxy_grace: float = Field(
        default=30.0,
        description="blue-green: seconds requests in flight get to finish on the old container after the switch, "
        "before it is stopped",
    )
    cd_init: bool = Field(
        default=False,
        description="`true` runs the app under Docker's init (`docker run --init`, compose's `init: true`), so an "
        "app that does not handle SIGTERM stops at once instead of after `CD_STOP_TIMEOUT`; `false` leaves it to "
        "the daemon's default, as `docker run` does",
    )
    # "linux/arm64": the platform pulled from a release's image index and run (under QEMU user emulation
    # when foreign); unset: the engine's own.
    cd_platform: str | None = Field(
        default=None,
        description="the platform pulled from a release's image index and run, e.g. `linux/arm64`; a foreign one "
        "runs under QEMU user emulation (tests, or an amd64 box standing in for a Pi)",
        json_schema_extra=shown("unset (the engine's own)"),
    )
    cd_version_constraint: str | None = Field(
        default=None, description="e.g. `<2.0.0` or `>=1.2.0,<1.3.0` (also `^1.2`, `~1.2.3`)"
    )
    cd_allow_prerelease: bool = Field(
        default=False,
        description="deploy pre-releases like `1.3.0-rc.1` too (never platform builds like `1.3.0-arm64`)",
    )
    # Local images of the app's healthy releases kept for a rollback (the current one included); older
    # ones of that app are pruned after each healthy deploy (cd_agent/images.py).
    cd_keep_images: int = Field(
        default=3,
        description="the app's healthy releases kept as local images for a rollback (current and previous "
        "included; at least 2); older ones of that app are pruned after each healthy deploy",
    )
    # CD_STRATEGY=swarm (cd_agent/swarm.py): the service, and the update config of a service the agent creates.
    cd_service: str | None = Field(
        default=None,
        description="`swarm`: the Swarm service to adopt, or to create when there is none",
        json_schema_extra=shown("`CD_CONTAINER_NAME`"),
    )
    cd_replicas: int = Field(
        default=1, description="`swarm`: replicas of a service the agent creates (an adopted service keeps its own)"
    )
    cd_update_parallelism: int = Field(default=1, description="`swarm`: tasks updated at once in a created service")
    cd_update_order: Literal["start-first", "stop-first"] = Field(
        default="start-first", description="`swarm`: update order of a created service, `start-first` or `stop-first`"
    )
    cd_update_failure_action: Literal["rollback", "pause", "continue"] = Field(
        default="rollback",
        description="`swarm`: what Swarm does when an updated task fails in a created service: `rollback`, "
        "`pause` or `continue`",
    )
    # CD_STRATEGY=compose (cd_agent/compose.py): the service of the user's project. The files are checked
    # here to exist; `compose config` runs only where compose is run (StrategyRow.start_check).
    cd_compose_service: str | None = Field(
        default=None,
        description="`compose`: the service that is the app (it needs an `image:` of `CD_IMAGE`)",
        json_schema_extra=shown("`CD_CONTAINER_NAME`"),
    )
    cd_compose_project: str | None = Field(
        default=None,
        description="`compose`: the project name (`-p`); by default `COMPOSE_PROJECT_NAME` of the `.env` beside "
        "the first file, else that file's folder name, in lower case, only `a-z0-9_-`",
        json_schema_extra=shown("compose's own"),
    )
    cd_compose_file: str | None = Field(
        default=None,
        validate_default=True,
        description="`compose`: the project's compose file(s), comma-separated, merged in that order as "
        "`-f a.yml -f b.yml`; checked with `compose config` when `watch`, `deploy`, `rollback` or `doctor` "
        "starts (not by `status`)",
        json_schema_extra=shown("required with `compose`", value="comma-separated list of paths"),
    )

    @field_validator("cd_image")
    @classmethod
    def _image(cls, value: str) -> str:
        value = value.strip()
        _image_ref(value)
        return value

    @field_validator("cd_container_name")
    @classmethod
    def _container_name(cls, value: str) -> str:
        if not _CONTAINER_NAME.match(value):
            raise ValueError(
                "a container name is at least 2 characters: letters, digits, '_', '.', '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("cd_strategy")
    @classmethod
    def _strategy(cls, value: str, info: ValidationInfo) -> str:
        from cd_agent.strategies import STRATEGIES  # the table's columns load nothing until called

        value = value.strip().lower()
        if value not in STRATEGIES:
            others = [name for name in STRATEGIES if name != "swap"]
            raise ValueError(
                f"{value!r} is not a deploy strategy: use swap (the default), {', '.join(others[:-1])} or {others[-1]}"
            )
        STRATEGIES[value].check(info.data)
        return value

    @field_validator("cd_service", "cd_compose_service")
    @classmethod
    def _service(cls, value: str | None) -> str | None:
        if value is not None and not _CONTAINER_NAME.match(value):
            raise ValueError("a service name is letters, digits, '_', '.', '-', starting with a letter or digit")
        return value

    @field_validator("cd_compose_project")
    @classmethod
    def _compose_project(cls, value: str | None) -> str | None:
        # compose's own rule for -p: lower-case letters, digits, '_' and '-', starting with a letter or digit
        if value is not None and not re.match(r"^[a-z0-9][a-z0-9_-]*$", value):
            raise ValueError("a compose project name is lower-case letters, digits, '_' and '-', starting with a"
                             " letter or digit")
        return value

    @field_validator("cd_compose_file")
    @classmethod
    def _compose_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("cd_strategy") != "compose":
            return value
        if value is None:
            raise PydanticCustomError("missing", "required with CD_STRATEGY=compose")
        from cd_agent.compose_project import split_files

        split_files(value)
        return value

    @field_validator("cd_replicas", "cd_update_parallelism")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be 1 or more")
        return value

    @field_validator("cd_ports")
    @classmethod
    def _ports(cls, value: str) -> str:
        parse_ports(value)
        return value

    @field_validator("cd_volumes")
    @classmethod
    def _volumes(cls, value: str) -> str:
        parse_volumes(value)
        return value

    @field_validator("cd_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("cd_env_file")
    @classmethod
    def _env_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            if not value.is_file():
                raise ValueError(f"no such file: {value}")
            read_env_text(value)
        return value

    @field_validator("cd_health_url")
    @classmethod
    def _health_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("cd_keep_images")
    @classmethod
    def _keep_images(cls, value: int) -> int:
        if value < 2:
            raise ValueError("must be 2 or more (the current release and the one a rollback goes back to)")
        return value

    @field_validator("cd_poll_interval", "cd_health_timeout")
    @classmethod
    def _positive_seconds(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a number of seconds above 0")
        return value

    @field_validator("cd_proxy_image")
    @classmethod
    def _proxy_image(cls, value: str) -> str:
        value = value.strip()
        if not value or any(char.isspace() for char in value):
            raise ValueError("must be an image reference, e.g. caddy:2")
        return value

    @field_validator("cd_health_grace", "cd_stop_timeout", "cd_proxy_grace")
    @classmethod
    def _non_negative_seconds(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be a number of seconds, 0 or more")
        return value

    @field_validator("cd_platform")
    @classmethod
    def _platform(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return str(parse_platform(value))  # its ValueError says the form

    @field_validator("cd_version_constraint")
    @classmethod
    def _constraint(cls, value: str | None) -> str | None:
        if value is not None:
            value = value.strip()
            _constraint(value)
        return value

    @property
    def image(self) -> ImageRef:
        """``CD_IMAGE`` parsed (registry, repository; no tag)."""
        return _image_ref(self.cd_image)

    @property
    def constraint(self) -> Constraint | None:
        """``CD_VERSION_CONSTRAINT`` parsed, or None when every version is allowed."""
        return None if self.cd_version_constraint is None else _constraint(self.cd_version_constraint)



def _image_ref(text: str) -> ImageRef:
    from shared.registry import parse_image_ref

    ref = parse_image_ref(text)
    if ref.tag is not None:
        raise ValueError(f"give the image without a tag (the agent picks the tag): {ref.name}")
    return ref


def _constraint(text: str) -> Constraint:
    from shared.versions import parse_constraint

    return parse_constraint(text)
