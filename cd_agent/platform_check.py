"""Whether a release has an image this machine can run, asked of the registry before anything is pulled.

A release built only for another platform (an arm64-only index on an amd64 host, or the reverse on a
Pi) can never be deployed here: it is a permanent error for that version, not an outage to retry.
The watcher asks ``PlatformCheck.problem`` before a deploy, and also recognises Docker's own pull error
(``pull_platform_problem``) for the case the registry did not tell (or changed in between).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from loguru import logger

from shared.errors import PiCicdError, RegistryError, RegistryNotFound, RegistryUnavailable
from shared.platforms import Platform, describe, runnable

# What dockerd says when an image index has no entry for its platform: the classic image store
# ("no matching manifest for linux/amd64 in the manifest list entries") and the containerd store.
_PULL_NO_PLATFORM = re.compile(
    r"no matching manifest for (?P<platform>\S+) in the manifest list entries|no match for platform in manifest"
)


class ManifestPlatforms(Protocol):
    """What the check needs from ``shared.registry.RegistryClient``."""

    def platforms(self, reference: str) -> list[Platform] | None: ...


class PlatformCheck:
    """Compares what a release offers (``registry.platforms``) with this engine's platform (``host()``,
    asked once: ``DockerGateway.platform``)."""

    def __init__(self, host: Callable[[], Platform], registry: ManifestPlatforms) -> None:
        self._ask_host = host
        self._host: Platform | None = None
        self._registry = registry

    def host(self) -> Platform | None:
        """This machine's platform, or None (with a warning) while Docker cannot say; asked again next time."""
        if self._host is None:
            try:
                self._host = self._ask_host()
            except PiCicdError as exc:
                logger.warning("cannot tell this machine's platform from Docker ({}); not checking platforms", exc)
                return None
            logger.info("this machine runs {} images", self._host)
        return self._host

    def problem(self, version: str, digest: str | None) -> str | None:
        """``"1.2.0 has no linux/amd64 image; it offers linux/arm64"``, or None when ``version`` has an
        image for this machine or the registry does not say. Registry outages are raised (the poll is
        retried); other registry errors leave the decision to ``docker pull``."""
        host = self.host()
        if host is None:
            return None
        try:
            offered = self._registry.platforms(digest or version)
        except RegistryUnavailable:
            raise
        except RegistryNotFound:
            return None  # gone since the HEAD: the deploy reports it
        except RegistryError as exc:
            logger.warning("could not read the platforms of {} ({}); leaving it to docker pull", version, exc)
            return None
        if offered is None or runnable(host, offered):
            return None
        return f"{version} has no {host} image; it offers {describe(offered)}"


def pull_platform_problem(version: str, error: str | None, host: Platform | None) -> str | None:
    """The same sentence when a failed deploy's ``error`` is Docker saying the release has no image for
    this platform; None for any other failure."""
    match = _PULL_NO_PLATFORM.search(error or "")
    if match is None:
        return None
    wanted = match.group("platform") or (str(host) if host is not None else "this machine's platform")
    return f"{version} has no {wanted} image (docker pull: {match.group(0)})"
