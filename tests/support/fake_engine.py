"""An in-memory ``cd_agent.engine.Engine``: a registry, local images and containers in dicts.

A release behaves as it was pushed (``FakeEngine.push``): ``good`` runs; ``exits`` exits with code 1
and is restarted by its restart policy (running again, ``ExitCode`` 0, as dockerd shows it);
``never_healthy`` stays ``starting`` under its HEALTHCHECK; ``unhealthy`` fails its HEALTHCHECK;
``refuses_start`` makes ``start`` fail as dockerd does when a host port is taken. ``before`` is called
with the operation and its target before every call: raise from it to fail that call (or to "kill" the
agent between two steps). Errors are the engine contract's (``EngineError``, ``DeployError``).

Networks exist when named in ``FakeEngine.networks`` (the proxy's is added by ``FakeProxy.ensure``); a
container is created on the networks of its spec, and ``create`` fails as dockerd does for one that does
not exist. ``FakeProxy`` is the blue-green proxy over it: a container created on a network with aliases
gets an address there while it runs, and the proxy "serves" the running container whose alias is its
upstream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from cd_agent.container_spec import ContainerSpec
from cd_agent.engine import ContainerInfo, ImageInfo, MountInfo, NetworkAttachment, NetworkInfo
from cd_agent.errors import DeployError, EngineError, ProxyError

Behaviour = Literal["good", "exits", "never_healthy", "unhealthy", "refuses_start"]


@dataclass
class Box:
    """One container; ``info`` is what ``container()`` answers."""

    info: ContainerInfo
    restart_policy: str
    behaviour: Behaviour
    log: list[str] = field(default_factory=list)

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(alias for attachment in self.info.networks for alias in attachment.aliases)


class FakeEngine:
    def __init__(self) -> None:
        self.registry: dict[str, tuple[ImageInfo, Behaviour]] = {}
        self.local: dict[str, tuple[ImageInfo, Behaviour]] = {}
        self.boxes: dict[str, Box] = {}
        self.before: Callable[[str, str], None] = lambda operation, target: None
        self._ids = 0
        self.created: list[ContainerSpec] = []
        self.networks: set[str] = {"bridge"}

    def push(self, repository: str, version: str, behaviour: Behaviour = "good", *, healthcheck: bool = False) -> str:
        """Put ``repository:version`` in the registry; returns its digest."""
        reference = f"{repository}:{version}"
        digest = "sha256:" + hashlib.sha256(f"{reference}/{behaviour}".encode()).hexdigest()
        checked = healthcheck or behaviour in ("never_healthy", "unhealthy")
        image = ImageInfo(digest, (reference,), (f"{repository}@{digest}",), ("/cache",), has_healthcheck=checked)
        self.registry[reference] = (image, behaviour)
        return digest

    def run_foreign(self, name: str, image: str, **setup: Any) -> str:
        """A running container pi-cicd did not create; ``setup``: ``ContainerInfo`` fields (labels, networks...)
        as `docker run` options would have set them. Its image ``sha256:foreign`` has no labels nor CMD."""
        info = ContainerInfo(self._new_id(), name, image, "sha256:foreign", "running", True, False, 0, 0, **setup)
        self.boxes[info.id] = Box(info, "unless-stopped", "good")
        self.local.setdefault(f"foreign:{info.id}", (ImageInfo("sha256:foreign"), "good"))
        return info.id

    def names(self) -> list[str]:
        return sorted(box.info.name for box in self.boxes.values())

    # the Engine interface

    def pull(self, repository: str, tag: str, *, auth: Mapping[str, str] | None = None) -> ImageInfo:
        reference = f"{repository}:{tag}"
        self.before("pull", reference)
        if reference not in self.registry:
            raise DeployError(f"pull {reference}: manifest unknown (HTTP 404)")
        self.local[reference] = self.registry[reference]
        return self.registry[reference][0]

    def image(self, reference: str) -> ImageInfo | None:
        self.before("image", reference)
        if reference in self.local:
            return self.local[reference][0]
        return next((image for image, _ in self.local.values() if image.id == reference), None)

    def images(self, repository: str) -> list[ImageInfo]:
        self.before("images", repository)
        return [image for reference, (image, _) in self.local.items() if reference.startswith(f"{repository}:")]

    def remove_image(self, reference: str) -> None:
        self.before("remove_image", reference)
        self.local.pop(reference, None)

    def create(self, spec: ContainerSpec) -> str:
        self.before("create", spec.name)
        if spec.image not in self.local:
            raise EngineError(f"docker create container {spec.name}: No such image {spec.image} (HTTP 404)", status=404)
        self._free(spec.name)
        for attachment in spec.networks:
            if attachment.network not in self.networks:
                raise EngineError(f"docker create container {spec.name}: network {attachment.network} not found"
                                  " (HTTP 404)", status=404)
        image, behaviour = self.local[spec.image]
        mounts = tuple(MountInfo(m.type, m.target, name=m.source, rw=not m.read_only) for m in spec.mounts)
        if not any(m.destination == "/cache" for m in mounts):
            mounts += (MountInfo("volume", "/cache", name=hashlib.sha256(self._new_id().encode()).hexdigest()),)
        info = ContainerInfo(
            self._new_id(), spec.name, spec.image, image.id, "created", False, False, 0, 0, dict(spec.labels), mounts,
            process=spec.process, network_mode=spec.network_mode or spec.network or "default",
            networks=spec.networks, host_options=dict(spec.host_options),
        )
        self.boxes[info.id] = Box(info, spec.restart_policy, behaviour)
        self.created.append(spec)
        return info.id

    def container(self, name_or_id: str) -> ContainerInfo | None:
        self.before("container", name_or_id)
        box = self._find(name_or_id)
        return None if box is None else box.info

    def network(self, name: str) -> NetworkInfo | None:
        self.before("network", name)
        return NetworkInfo(f"net-{name}", name, "bridge") if name in self.networks else None

    def containers(self, *, label: str | None = None, name: str | None = None) -> list[ContainerInfo]:
        self.before("containers", label or name or "")
        key, _, value = (label or "").partition("=")
        return [
            box.info for box in self.boxes.values()
            if (not key or (key in box.info.labels and (not value or box.info.labels[key] == value)))
            and (not name or name in box.info.name)
        ]

    def rename(self, container: str, new_name: str) -> None:
        box = self._box("rename", container)
        self._free(new_name)
        box.info = replace(box.info, name=new_name)

    def reattach(self, container: str, attachment: NetworkAttachment) -> None:
        box = self._box("reattach", container)
        others = tuple(old for old in box.info.networks if old.network != attachment.network)
        box.info = replace(box.info, networks=(*others, attachment))

    def start(self, container: str) -> None:
        box = self._box("start", container)
        if box.behaviour == "refuses_start":
            raise EngineError(f"docker start container {container}: port is already allocated (HTTP 500)", status=500)
        box.log.append(f"app {box.info.image} starting")
        running, restarts, code = True, 0, 0
        if box.behaviour == "exits":
            box.log.append("fatal: cannot open /etc/app.conf")
            # dockerd restarts it at once under a restart policy, and shows ExitCode 0 while it runs again
            running = box.restart_policy != "no"
            restarts, code = (1, 0) if running else (0, 1)
        image = self.local.get(box.info.image, self.registry.get(box.info.image))
        health = {"never_healthy": "starting", "unhealthy": "unhealthy"}.get(box.behaviour, "healthy")
        box.info = replace(
            box.info, status="running" if running else "exited", running=running, restart_count=restarts,
            exit_code=code, health_status=health if image and image[0].has_healthcheck else None,
            health_output=("connection refused",) if health == "unhealthy" else (),
        )

    def stop(self, container: str, *, timeout: float) -> None:
        box = self._box("stop", container)
        box.info = replace(box.info, status="exited", running=False, exit_code=0)

    def remove(self, container: str) -> None:
        self.before("remove", container)
        box = self._find(container)
        if box is not None:
            del self.boxes[box.info.id]

    def logs_tail(self, container: str, lines: int = 50) -> str:
        return "\n".join(self._box("logs_tail", container).log[-lines:])

    def close(self) -> None:
        pass

    # helpers

    def _find(self, name_or_id: str) -> Box | None:
        return self.boxes.get(name_or_id) or next((b for b in self.boxes.values() if b.info.name == name_or_id), None)

    def _box(self, operation: str, container: str) -> Box:
        self.before(operation, container)
        box = self._find(container)
        if box is None:
            raise EngineError(f"docker {operation} container {container}: No such container (HTTP 404)", status=404)
        return box

    def _free(self, name: str) -> None:
        if self._find(name) is not None:
            raise EngineError(f"Conflict. The container name /{name} is already in use (HTTP 409)", status=409)

    def address(self, box: Box) -> str:
        return f"10.9.{int(box.info.id, 16) // 256}.{int(box.info.id, 16) % 256}"

    def by_address(self, address: str) -> Box | None:
        return next((box for box in self.boxes.values() if self.address(box) == address), None)

    def _new_id(self) -> str:
        self._ids += 1
        return f"{self._ids:064x}"


class FakeProxy:
    """``cd_agent.blue_green.Proxy`` over a ``FakeEngine``; ``upstream_alias`` outlives a "killed" agent,
    as proxy.json does. Its operations go through the engine's ``before`` hook too."""

    def __init__(self, engine: FakeEngine, network: str | None = None) -> None:
        self.engine = engine
        self.network = network
        self.exists = False
        self.upstream_alias: str | None = None
        self.switches: list[str | None] = []
        self.stack_aliases: dict[str, tuple[str, ...]] = {}
        """The app's aliases the proxy answers to on the stack's networks."""

    def ensure(self, serve: Mapping[str, Sequence[str]] | None = None) -> None:
        self.engine.before("proxy_ensure", "proxy")
        if not self.exists:  # created: it joins the stack's networks before it starts
            self.stack_aliases.update({net: tuple(aliases) for net, aliases in (serve or {}).items() if aliases})
        self.exists = True
        if self.network is not None:
            self.engine.networks.add(self.network)

    def upstream(self) -> str | None:
        return self.upstream_alias

    def switch(self, upstream: str | None) -> None:
        self.engine.before("proxy_switch", upstream or "")
        self.upstream_alias = upstream
        self.switches.append(upstream)

    def serve_on(self, networks: Mapping[str, Sequence[str]]) -> list[str]:
        self.engine.before("proxy_serve_on", ",".join(networks))
        changed = [
            net for net, aliases in networks.items() if aliases and self.stack_aliases.get(net) != tuple(aliases)
        ]
        self.stack_aliases.update({net: tuple(networks[net]) for net in changed})
        return changed

    def address(self, container: str) -> str:
        box = self.engine._find(container)
        if box is None or not box.info.running or self.network not in {a.network for a in box.info.networks}:
            raise ProxyError(f"{container} has no address on the network (not attached, or not running)")
        return self.engine.address(box)

    def serving(self) -> ContainerInfo | None:
        """The container a user's request reaches now, if any."""
        if not self.exists or self.upstream_alias is None:
            return None
        return next(
            (box.info for box in self.engine.boxes.values()
             if self.upstream_alias in box.aliases and box.info.running),
            None,
        )
