"""The reverse proxy of the blue-green strategy: a Caddy container that owns the published ports.

Shape (issue 10, part 2)::

    host  CD_PORTS (e.g. 127.0.0.1:8080:8080)
      │
      ▼
    <app>-proxy   Caddy, listening on each CD_PORTS container port, restart policy unless-stopped
      │  network <app>-net (a private bridge network; the app containers publish nothing)
      ▼
    app container reached by its alias on <app>-net, same container port

The pure part (``caddy_config``, the names) decides what Caddy should run; ``ProxyController``
makes the container agree with it; ``DockerProxyEngine`` is the only code here touching Docker,
behind the ``ProxyEngine`` Protocol (the exact operations the controller needs).

**The admin API is never published.** Caddy's admin endpoint listens on ``localhost:2019`` inside
the proxy container's own network namespace, which neither the host nor the app containers can
reach. The agent changes the configuration by copying the JSON into the container
(``put_archive``, i.e. ``docker cp``) and running ``caddy reload`` there (``docker exec``), which
POSTs it to ``/load``. Both go through the Docker API only, so the same code works whether the
agent runs on the host or in a container with the Docker socket, without joining any network.

**Switching drops no request.** Caddy applies any change by starting new servers beside the old
ones and shutting the old ones down gracefully: requests in flight on the old upstream finish (up to
``grace_period_s``), new ones go to the new upstream. Two gaps are closed here, both measured by
bench/proxy_switch.py: connections the kernel queued on the old listening socket are migrated to the
new one (``net.ipv4.tcp_migrate_req``, see ``proxy_sysctls``), and responses carry
``Connection: close`` (unless ``keepalive``), because the old server closes its idle keep-alive
connections and a client sending on one at that instant gets no answer.

**The configuration lives in the agent's state** (``ProxyStateFile``: the upstream alias, a JSON
file in STATE_DIR), not in hand-edited files. The file copied into the container is rewritten before
every reload, and it is what ``caddy run --config`` reads when the container (re)starts, so a
``docker restart``, a dockerd restart or a reboot comes back serving the last upstream without the
agent; Caddy's own autosave is off (``persist: false``) so there is one copy, not two.
``ProxyController.ensure`` re-applies the state's upstream anyway, which also repairs a proxy that
was recreated or changed by hand.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors
from loguru import logger

from cd_agent import docker_lookup
from cd_agent.docker_gateway import docker_errors
from cd_agent.errors import EngineError, ProxyError
from cd_agent.proxy_ports import proxied_ports
from cd_agent.settings import PortMapping

LABEL_PROXY = "io.pi-cicd.proxy"
"""On the proxy container and the network: the name of the app container they serve."""
LABEL_PROXY_CONFIG = "io.pi-cicd.proxy.config"
"""On the proxy container: image and ports it was created with; a change means re-creating it."""

CONFIG_PATH = "/etc/caddy/pi-cicd.json"
ADMIN_LISTEN = "localhost:2019"
DEFAULT_GRACE_PERIOD_S = 30.0
# A dial that fails (the upstream restarting under its restart policy) is retried for this long
# before the client gets a 502; dials are safe to retry, nothing reached the app yet.
UPSTREAM_TRY_DURATION = "2s"
# Every response closes its client connection unless ``keepalive``: Caddy applies any change by
# replacing its servers, and the old server closes its idle keep-alive connections; a client that
# sends its next request on one at that moment gets no answer (httpx and urllib3 do not retry it,
# browsers and Go do). Without idle connections there is nothing to close under a client.
# Caddy (2.6+ on Linux) binds each configuration's listener anew with SO_REUSEPORT and closes the old
# socket after a reload; connections the kernel had queued on the old socket would be reset. With
# this per-network-namespace sysctl (Linux 5.14+) the kernel hands them to the new socket instead.
_MIGRATE_SYSCTL = "net.ipv4.tcp_migrate_req"
# A proxy image that runs Caddy as a non-root user (scripts/proxy-image's does) must still listen on
# whatever container port CD_PORTS names, 80 included. Docker 20.10+ sets this in every container
# already; said here so that it holds on older engines too. Per network namespace (Linux 4.11+).
_UNPRIVILEGED_PORTS_SYSCTL = "net.ipv4.ip_unprivileged_port_start"
# Caddy's placeholder for the address the client connected from (the peer of the TCP connection).
CLIENT_ADDRESS = "{http.request.remote.host}"


def proxy_sysctls(proc: Path = Path("/proc/sys")) -> dict[str, str]:
    """The sysctls for the proxy container that this kernel knows (the agent shares the host's kernel)."""
    wanted = {_MIGRATE_SYSCTL: "1", _UNPRIVILEGED_PORTS_SYSCTL: "0"}
    return {name: value for name, value in wanted.items() if (proc / name.replace(".", "/")).exists()}


_CONNECTION_CLOSE: dict[str, Any] = {
    "handler": "headers",
    "response": {"set": {"Connection": ["close"]}, "deferred": True},
}


# Pure: names and Caddy's configuration


def proxy_container_name(app: str) -> str:
    """The proxy container of app container ``app`` (``CD_CONTAINER_NAME``)."""
    return f"{app}-proxy"


def network_name(app: str) -> str:
    """The private network the proxy and ``app``'s containers share."""
    return f"{app}-net"


def upstream_dial(alias: str, port: int) -> str:
    """What Caddy dials for the app container known as ``alias`` on the private network."""
    return f"{alias}:{port}"


def caddy_config(
    ports: Sequence[PortMapping],
    upstream: str | None,
    *,
    grace_period_s: float = DEFAULT_GRACE_PERIOD_S,
    keepalive: bool = False,
) -> dict[str, Any]:
    """Caddy's JSON configuration: one server per container port, proxying to ``upstream`` (an alias).

    No upstream yet (a fresh proxy before the first deploy) answers 503 rather than refusing.
    """
    servers: dict[str, Any] = {}
    for port in proxied_ports(ports):
        if upstream is None:
            handler: dict[str, Any] = {
                "handler": "static_response",
                "status_code": 503,
                "body": "pi-cicd proxy: no app deployed yet\n",
            }
        else:
            handler = {
                "handler": "reverse_proxy",
                "upstreams": [{"dial": upstream_dial(upstream, port)}],
                "load_balancing": {"try_duration": UPSTREAM_TRY_DURATION, "try_interval": "100ms"},
                # Caddy replaces X-Forwarded-For with the client's address but passes X-Real-IP on as the
                # client sent it, and apps trust either: both say the real address.
                "headers": {"request": {"set": {"X-Real-Ip": [CLIENT_ADDRESS]}}},
            }
        handlers = [handler] if keepalive else [_CONNECTION_CLOSE, handler]
        servers[f"port{port}"] = {
            "listen": [f":{port}"],
            "routes": [{"handle": handlers}],
            # Plain HTTP on the ports the user chose: no certificates, no redirects to :443.
            "automatic_https": {"disable": True},
        }
    return {
        "admin": {"listen": ADMIN_LISTEN, "config": {"persist": False}},
        "apps": {"http": {"grace_period": f"{grace_period_s:g}s", "servers": servers}},
    }


def config_label(image: str, ports: Sequence[PortMapping]) -> str:
    """What the proxy container was created with; compared on adoption."""
    return json.dumps({"image": image, "ports": sorted(str(port) for port in ports)}, sort_keys=True)


# The agent's state: which app container the proxy should send traffic to


class ProxyStateFile:
    """The proxy's desired upstream (an alias on the private network), as JSON under STATE_DIR.

    Written atomically (a temporary file renamed over the old one), so a crash leaves the old or
    the new upstream, never half a file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def upstream(self) -> str | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ProxyError(f"cannot read the proxy state {self.path}: {exc}") from exc
        upstream = data.get("upstream") if isinstance(data, dict) else None
        if upstream is not None and not isinstance(upstream, str):
            raise ProxyError(f"the proxy state {self.path} has a bad upstream: {upstream!r}")
        return upstream

    def set_upstream(self, upstream: str | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            temporary.write_text(json.dumps({"upstream": upstream}) + "\n", encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            raise ProxyError(f"cannot write the proxy state {self.path}: {exc}") from exc


# The Docker operations the controller needs


@dataclass(frozen=True)
class ProxyContainer:
    id: str
    name: str
    running: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    networks: Mapping[str, str] = field(default_factory=dict)
    """Network name → this container's IP address on it ("" while stopped)."""
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Network name → the aliases it answers to there (the engine's own short id left out)."""
    restarting: bool = False
    """Its process exited and the restart policy will start it again (Docker's backoff)."""
    state: str = ""
    """How it is, in words, when not running: its exit code, an OOM kill, the engine's error, its restarts."""


@dataclass(frozen=True)
class ProxyContainerSpec:
    name: str
    image: str
    network: str
    ports: tuple[PortMapping, ...]
    labels: Mapping[str, str]
    command: tuple[str, ...] = ("caddy", "run", "--config", CONFIG_PATH)
    sysctls: Mapping[str, str] = field(default_factory=dict)


class ProxyEngine(Protocol):
    """The container and network operations of the proxy (the Docker SDK implements them below)."""

    def container(self, name: str) -> ProxyContainer | None: ...
    def ensure_network(self, name: str, labels: Mapping[str, str]) -> None: ...
    def remove_network(self, name: str) -> None: ...
    def create(self, spec: ProxyContainerSpec) -> None: ...
    def start(self, name: str) -> None: ...
    def remove(self, name: str) -> None: ...
    def connect(self, container: str, network: str, aliases: Sequence[str]) -> None: ...
    def disconnect(self, container: str, network: str) -> None: ...
    def put_file(self, container: str, path: str, data: bytes) -> None: ...
    def exec(self, container: str, argv: Sequence[str]) -> tuple[int, str]: ...
    def logs(self, container: str, tail: int) -> str: ...


class DockerProxyEngine:
    """``ProxyEngine`` over the Docker SDK's low-level API; errors as the ``Engine`` contract says: an API
    refusal is ``EngineError`` (with its status), an engine out of reach ``DockerUnavailable``."""

    def __init__(self, client: docker.DockerClient) -> None:
        self._api = client.api

    def container(self, name: str) -> ProxyContainer | None:
        with docker_errors(f"inspect container {name}"):
            data = docker_lookup.container(self._api, name)
        if data is None:
            return None
        networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
        state = data.get("State") or {}
        return ProxyContainer(
            id=data["Id"],
            name=str(data.get("Name", "")).lstrip("/"),
            running=bool(state.get("Running")),
            restarting=bool(state.get("Restarting")),
            state=_state_text(state, data.get("RestartCount")),
            labels=dict((data.get("Config") or {}).get("Labels") or {}),
            networks={net: str((info or {}).get("IPAddress") or "") for net, info in networks.items()},
            aliases={
                net: tuple(alias for alias in (info or {}).get("Aliases") or () if alias != data["Id"][:12])
                for net, info in networks.items()
            },
        )

    def ensure_network(self, name: str, labels: Mapping[str, str]) -> None:
        with docker_errors(f"create network {name}"):
            # Not a list filtered by name: that filter matches any network whose name contains ``name``.
            if docker_lookup.network(self._api, name) is not None:
                return
            try:
                self._api.create_network(name, driver="bridge", labels=dict(labels), check_duplicate=True)
            except docker.errors.APIError as exc:
                # Another caller created it between the look and the create: that is what we wanted.
                if exc.status_code != 409 and docker_lookup.network(self._api, name) is None:
                    raise

    def remove_network(self, name: str) -> None:
        with docker_errors(f"remove network {name}"):
            found = docker_lookup.network(self._api, name)
            try:
                if found is not None:
                    self._api.remove_network(found["Id"])
            except docker.errors.NotFound:
                return

    def create(self, spec: ProxyContainerSpec) -> None:
        host_config = self._api.create_host_config(
            port_bindings={
                port.container_key: [{"HostIp": port.host_ip or "", "HostPort": str(port.host_port or "")}]
                for port in spec.ports
            },
            restart_policy={"Name": "unless-stopped"},
            network_mode=spec.network,
            sysctls=dict(spec.sysctls) or None,
        )
        networking = self._api.create_networking_config({spec.network: self._api.create_endpoint_config()})
        with docker_errors(f"create container {spec.name} from {spec.image}"):
            self._api.create_container(
                spec.image,
                name=spec.name,
                command=list(spec.command),
                ports=[(port.container_port, port.protocol) for port in spec.ports],
                labels=dict(spec.labels),
                host_config=host_config,
                networking_config=networking,
                detach=True,
            )

    def start(self, name: str) -> None:
        with docker_errors(f"start container {name}"):
            self._api.start(name)

    def remove(self, name: str) -> None:
        # v=True: the official caddy image declares VOLUME /config /data; nothing there is ours to keep.
        with docker_errors(f"remove container {name}"):
            found = docker_lookup.container(self._api, name)
            try:
                if found is not None:
                    self._api.remove_container(found["Id"], force=True, v=True)
            except docker.errors.NotFound:
                return

    def connect(self, container: str, network: str, aliases: Sequence[str]) -> None:
        with docker_errors(f"connect {container} to network {network}"):
            self._api.connect_container_to_network(container, network, aliases=list(aliases))

    def disconnect(self, container: str, network: str) -> None:
        with docker_errors(f"disconnect {container} from network {network}"):
            self._api.disconnect_container_from_network(container, network)

    def put_file(self, container: str, path: str, data: bytes) -> None:
        directory, _, filename = path.rpartition("/")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(filename)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        with docker_errors(f"copy {path} into container {container}"):
            self._api.put_archive(container, directory or "/", buffer.getvalue())

    def exec(self, container: str, argv: Sequence[str]) -> tuple[int, str]:
        with docker_errors(f"exec {argv[0]} in container {container}"):
            created = self._api.exec_create(container, list(argv), stdout=True, stderr=True)
            output = self._api.exec_start(created["Id"])
            code = self._api.exec_inspect(created["Id"]).get("ExitCode")
        text = output.decode("utf-8", errors="replace") if isinstance(output, bytes) else str(output)
        return int(code if code is not None else -1), text

    def logs(self, container: str, tail: int) -> str:
        with docker_errors(f"read the log of container {container}"):
            output = self._api.logs(container, stdout=True, stderr=True, tail=tail)
        return output.decode("utf-8", errors="replace") if isinstance(output, bytes) else str(output)


def _state_text(state: Mapping[str, Any], restarts: object) -> str:
    """``State`` of ``docker inspect`` in words, for a message about a proxy that is not running."""
    words = [str(state.get("Status") or "unknown")]
    if state.get("ExitCode") is not None:
        words.append(f"exit code {state.get('ExitCode')}")
    if state.get("OOMKilled"):
        words.append("killed for lack of memory")
    if state.get("Error"):
        words.append(f"engine error {state.get('Error')!r}")
    if state.get("FinishedAt") and not str(state.get("FinishedAt")).startswith("0001-"):
        words.append(f"finished at {state.get('FinishedAt')}")
    if restarts:
        words.append(f"restarted {restarts} times")
    return ", ".join(words)


# The controller


class ProxyController:
    """Keeps ``<app>-proxy`` running on ``<app>-net`` with the published ports and the state's upstream.

    ``ensure()`` creates or adopts it (call it at start-up and before a blue-green deploy);
    ``switch(alias)`` moves the traffic; ``attach(container, alias)`` puts an app container on the
    private network. Health-checking the new container before ``switch`` is the deployer's job:
    ``address(container)`` gives its IP there, reachable from an agent on the host (an agent in a
    container reaches it after ``attach``-ing its own container too).
    """

    def __init__(
        self,
        engine: ProxyEngine,
        state: ProxyStateFile,
        *,
        app: str,
        image: str,
        ports: Sequence[PortMapping],
        grace_period_s: float = DEFAULT_GRACE_PERIOD_S,
        keepalive: bool = False,
        ready_timeout_s: float = 20.0,
    ) -> None:
        proxied_ports(ports)  # refuse UDP or no ports before anything is created
        self.engine = engine
        self.state = state
        self.app = app
        self.image = image
        self.ports = tuple(ports)
        self.grace_period_s = grace_period_s
        self.keepalive = keepalive
        self.ready_timeout_s = ready_timeout_s
        self.container_name = proxy_container_name(app)
        self.network = network_name(app)

    def ensure(self, serve: Mapping[str, Sequence[str]] | None = None) -> None:
        """Network, container (created, adopted, or re-created when its image or ports changed),
        running, serving the state's upstream. Idempotent.

        ``serve``: the app's aliases on the stack's networks (as ``serve_on``); a proxy created here joins
        them before it starts. Docker gives a container's default route, and with it the published ports
        (their DNAT and docker-proxy), to its first network in name order that has a gateway, internal
        ones last: a running proxy joining a stack network that sorts before ``NAME-net`` (``shop_default``
        before ``web-net``) has its ports moved there, which resets the connections being made at that
        instant. Joined before the start, the ports are set up once."""
        self.engine.ensure_network(self.network, {LABEL_PROXY: self.app})
        wanted = config_label(self.image, self.ports)
        existing = self.engine.container(self.container_name)
        if existing is not None and LABEL_PROXY not in existing.labels:
            raise ProxyError(
                f"a container named {self.container_name} exists and is not pi-cicd's proxy; "
                "rename or remove it (nothing was changed)"
            )
        if existing is not None and existing.labels.get(LABEL_PROXY_CONFIG) != wanted:
            logger.warning(
                "proxy {} was created with {}, wanted {}: re-creating it (a short outage)",
                self.container_name, existing.labels.get(LABEL_PROXY_CONFIG), wanted,
            )
            self.engine.remove(self.container_name)
            existing = None
        config = self._config_bytes(self.state.upstream())
        if existing is None:
            self.engine.create(
                ProxyContainerSpec(
                    name=self.container_name,
                    image=self.image,
                    network=self.network,
                    ports=self.ports,
                    # Not io.pi-cicd.managed: that label marks app releases (with a version) to the deployer.
                    labels={LABEL_PROXY: self.app, LABEL_PROXY_CONFIG: wanted},
                    sysctls=proxy_sysctls(),
                )
            )
            # Copied before the first start, so Caddy starts with it and never serves anything else.
            try:
                self.engine.put_file(self.container_name, CONFIG_PATH, config)
                self.serve_on(serve or {})
                self.engine.start(self.container_name)
            except EngineError as exc:
                # A host port already taken fails here: no half-made proxy is left for the next try.
                self.engine.remove(self.container_name)
                ports = ", ".join(str(port) for port in self.ports)
                raise ProxyError(f"cannot start the proxy {self.container_name} publishing {ports}: {exc}") from exc
            logger.info("created proxy {} on network {}", self.container_name, self.network)
        else:
            if self.network not in existing.networks:
                self.engine.connect(self.container_name, self.network, [])
            if not existing.running:
                self.serve_on(serve or {})  # stopped: joined before it starts again, as when created
                self.engine.put_file(self.container_name, CONFIG_PATH, config)
                self.engine.start(self.container_name)
            logger.info("adopted proxy {}", self.container_name)
        self._load(config)

    def upstream(self) -> str | None:
        """The alias the proxy sends traffic to, as the agent's state records it."""
        return self.state.upstream()

    def switch(self, upstream: str | None) -> None:
        """Send new requests to ``upstream`` (an alias on the private network; None: answer 503).

        Returns once Caddy runs the new configuration, without waiting for requests still in flight
        on the old upstream: they finish there within ``grace_period_s`` (then Caddy cuts them), so
        stop the old container only after that. The state is written first: if the agent dies
        before Caddy has the new configuration, ``ensure()`` at start-up applies it.
        """
        self.state.set_upstream(upstream)
        self._load(self._config_bytes(upstream))
        logger.info("proxy {} now sends traffic to {}", self.container_name, upstream or "nothing (503)")

    def attach(self, container: str, alias: str) -> None:
        """Connect ``container`` to the private network, reachable there (by the proxy) as ``alias``."""
        info = self.engine.container(container)
        if info is None:
            raise ProxyError(f"cannot attach {container} to {self.network}: no such container")
        if self.network not in info.networks:
            self.engine.connect(container, self.network, [alias])

    def serve_on(self, networks: Mapping[str, Sequence[str]]) -> list[str]:
        """Answer to the app's aliases on its other networks (``web`` on a compose project's network), so
        the stack's services reach the app through the switch as users do; returns the networks changed.

        Joined once and left alone afterwards; a network where it answers to other aliases (the settings
        changed) is left and joined again, which its clients there see as a short break."""
        info = self.engine.container(self.container_name)
        if info is None:
            raise ProxyError(f"cannot join {', '.join(networks)}: the proxy {self.container_name} is gone")
        changed = []
        for network, aliases in networks.items():
            if network == self.network or not aliases:
                continue
            if network in info.networks:
                if set(info.aliases.get(network, ())) == set(aliases):
                    continue
                self.engine.disconnect(self.container_name, network)
            self.engine.connect(self.container_name, network, list(aliases))
            logger.info("proxy {} answers to {} on network {}", self.container_name, "/".join(aliases), network)
            changed.append(network)
        return changed

    def address(self, container: str) -> str:
        """``container``'s IP on the private network (running containers only)."""
        info = self.engine.container(container)
        address = info.networks.get(self.network, "") if info is not None else ""
        if not address:
            raise ProxyError(f"{container} has no address on {self.network} (not attached, or not running)")
        return address

    def remove(self) -> None:
        """Remove the proxy container and the network (the app containers must be gone or detached)."""
        self.engine.remove(self.container_name)
        self.engine.remove_network(self.network)

    def _config_bytes(self, upstream: str | None) -> bytes:
        config = caddy_config(self.ports, upstream, grace_period_s=self.grace_period_s, keepalive=self.keepalive)
        return json.dumps(config, indent=2).encode() + b"\n"

    def _load(self, config: bytes) -> None:
        """Copy ``config`` into the container and have Caddy load it (retried while Caddy starts, and while
        the container comes back from an exit: see ``_between_lives``)."""
        self.engine.put_file(self.container_name, CONFIG_PATH, config)
        # No --force: Caddy skips a configuration identical to the running one, so adopting a proxy
        # or repeating a switch does not replace its servers.
        argv = ["caddy", "reload", "--config", CONFIG_PATH, "--address", ADMIN_LISTEN]
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                code, output = self.engine.exec(self.container_name, argv)
            except EngineError as exc:  # 409: the container is not running, or restarting
                if not _EXEC_FAILED.search(str(exc)):
                    raise ProxyError(f"cannot configure the proxy {self.container_name}: {exc}") from exc
                code, output = -1, str(exc)
            if code == 0:
                return
            # "connection refused" while Caddy is still starting; anything else from Caddy is final.
            starting = "connection refused" in output or "connect: " in output
            if not starting and not _EXEC_FAILED.search(output):
                raise ProxyError(f"caddy in {self.container_name} refused the configuration: {output.strip()}")
            if not starting:
                self._between_lives()
            if time.monotonic() > deadline:
                raise ProxyError(self._not_serving(output))
            time.sleep(0.1)

    def _between_lives(self) -> None:
        """The engine could not run ``caddy reload`` in the container: Caddy's process had exited. Under its
        restart policy Docker starts it again (after a backoff, seen as ``restarting``), and it then reads
        the configuration file already copied; a container stopped for good (by hand, or the policy gave
        up) is started here, as ``ensure`` does on adoption. Either way the reload is tried again."""
        info = self.engine.container(self.container_name)
        if info is None:
            raise ProxyError(f"the proxy {self.container_name} is gone (removed while the agent configured it)")
        if not info.running and not info.restarting:
            logger.warning("proxy {} is not running ({}): starting it", self.container_name, info.state)
            self.engine.start(self.container_name)

    def _not_serving(self, output: str) -> str:
        info = self.engine.container(self.container_name)
        state = info.state if info is not None else "gone"
        try:
            said = self.engine.logs(self.container_name, 8).strip()
        except EngineError as exc:
            said = f"(no log: {exc})"
        return (
            f"caddy in {self.container_name} did not take the configuration within {self.ready_timeout_s:g}s"
            f" ({output.strip()}); the container: {state}; its last log lines:\n{said}"
        )


# The engine could not run a process in the container: it is not running (any more), or restarting. The
# 409 of the API names it; runc's own words come back as the exec's output when the process had exited
# after the engine last saw it running ("OCI runtime exec failed: ... cannot exec in a stopped container").
_EXEC_FAILED = re.compile(r"is not running|is restarting|OCI runtime exec failed|cannot exec in a stopped")
