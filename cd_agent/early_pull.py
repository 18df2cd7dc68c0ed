"""The release's image pulled by the watcher while its deploy process starts.

A deploy process (``cd_agent.deploy_child``) spends its first 0.4–1.6 s importing the Docker SDK and
the deployer, then pulls the release (0.6–0.9 s for a trivial image from a local registry, more over
a network). Neither needs the other: as the watcher hands a release to the child, it asks the Docker
Engine to pull the same ``CD_IMAGE:version`` itself, with the same credentials, over the engine's
socket and the HTTP client it already has. By the time the child fetches the image it is there (the
deploy then says ``already here; not pulling``) or on its way (the engine joins the two pulls). The
version and its digest came from the registry, as for any deploy; nothing else is believed.

Only for a local engine (``DOCKER_HOST`` unset or ``unix://``), and not under Swarm, whose platform
check asks for every node's platform before anything may be pulled. A failed early pull changes
nothing: the child pulls and reports as before. An image this machine cannot run is refused by the
engine (no matching manifest), so nothing is left behind for a release the platform check refuses.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from typing import TYPE_CHECKING

import httpx
from loguru import logger

if TYPE_CHECKING:
    from cd_agent.apps import AppTarget

DEFAULT_SOCKET = "/var/run/docker.sock"
# A pull is read to its end (the engine cancels a pull whose client goes away); never longer than this.
PULL_TIMEOUT = httpx.Timeout(10.0, read=300.0)


def engine_socket(environ: dict[str, str] | None = None) -> str | None:
    """The local engine's socket path from ``DOCKER_HOST`` as the Docker SDK reads it; None for a remote engine."""
    host = (os.environ if environ is None else environ).get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://"):] or DEFAULT_SOCKET
    return None


class EarlyPull:
    """Starts pulls of ``CD_IMAGE:version`` on the engine at ``socket``, each in a thread of its own."""

    def __init__(self, socket: str) -> None:
        self._socket = socket

    def start(self, target: AppTarget, version: str) -> threading.Thread | None:
        """Pull ``target``'s image at ``version`` in the background; None when it does not apply (Swarm)."""
        from cd_agent.strategies import STRATEGIES

        if not STRATEGIES[target.strategy].pulls_locally:
            return None
        thread = threading.Thread(
            target=self._pull, args=(target, version), name=f"early-pull-{target.name}", daemon=True
        )
        thread.start()
        return thread

    def _pull(self, target: AppTarget, version: str) -> None:
        reference = f"{target.image.name}:{version}"
        params = {"fromImage": target.image.name, "tag": version}
        if target.platform:
            params["platform"] = target.platform
        headers = {}
        auth = target.registry_auth
        if auth is not None:
            # The engine's X-Registry-Auth: base64url of the credentials' JSON, as the Docker SDK sends it.
            encoded = json.dumps({**auth, "serveraddress": target.image.registry}).encode()
            headers["X-Registry-Auth"] = base64.urlsafe_b64encode(encoded).decode()
        began = time.monotonic()
        try:
            with (
                httpx.Client(transport=httpx.HTTPTransport(uds=self._socket), timeout=PULL_TIMEOUT) as client,
                client.stream("POST", "http://docker/images/create", params=params, headers=headers) as answer,
            ):
                error = None
                for line in answer.iter_lines():
                    if '"error"' in line:
                        error = line[:300]
                if answer.status_code != 200 or error is not None:
                    logger.debug("early pull of {} failed ({} {}); the deploy pulls it", reference,
                                 answer.status_code, error or "")
                    return
        except httpx.HTTPError as exc:
            logger.debug("early pull of {} failed ({}); the deploy pulls it", reference, exc)
            return
        logger.debug("early pull of {} done in {:.2f}s", reference, time.monotonic() - began)
