"""The platform check of a swarm: a release must have an image for every node's platform, not only the manager's.

Swarm would leave a task of a node it cannot serve pending forever ("no suitable node (unsupported platform
on 1 node)"), so the check runs before the update, like the single-machine one, and names the node.
"""

from __future__ import annotations

from collections.abc import Callable

from loguru import logger

from cd_agent.platform_check import ManifestPlatforms, PlatformCheck
from shared.errors import PiCicdError, RegistryError, RegistryNotFound, RegistryUnavailable
from shared.platforms import Platform, describe, engine_platform, platform, runnable


def node_platform(os: str, architecture: str) -> Platform:
    """A node's platform from its description (``uname -m``: ``x86_64``, ``aarch64``, ``armv7l``)."""
    if architecture.strip().lower().startswith("armv"):
        return engine_platform(os, "arm", architecture)
    return platform(os, architecture)


class FleetPlatformCheck(PlatformCheck):
    """``PlatformCheck`` over every node of the swarm (``nodes()``: hostname -> platform)."""

    def __init__(
        self, host: Callable[[], Platform], nodes: Callable[[], dict[str, Platform]], registry: ManifestPlatforms
    ) -> None:
        super().__init__(host, registry)
        self._nodes = nodes

    def problem(self, version: str, digest: str | None) -> str | None:
        try:
            nodes = self._nodes()
        except PiCicdError as exc:
            logger.warning("cannot list the swarm's nodes ({}); checking this machine's platform only", exc)
            return super().problem(version, digest)
        try:
            offered = self._registry.platforms(digest or version)
        except RegistryUnavailable:
            raise
        except RegistryNotFound:
            return None
        except RegistryError as exc:
            logger.warning("could not read the platforms of {} ({}); leaving it to Swarm", version, exc)
            return None
        if offered is None:
            return None
        missing = sorted((str(host), node) for node, host in nodes.items() if not runnable(host, offered))
        if not missing:
            return None
        lacking = ", ".join(f"{host} (node {node})" for host, node in missing)
        return f"{version} has no image for {lacking}; it offers {describe(offered)}"
