"""Docker objects looked up by their exact name (or full ID), never by a prefix of an ID.

Docker answers a reference that names nothing with the object whose ID *starts* with it: with no
container called ``fe``, ``docker inspect fe`` is the container whose ID begins ``fe…``, and ``docker
rm fe`` removes it; services and networks resolve the same way, and a network list filtered by name
matches any network whose name *contains* it. Names of hex digits are common (``db``, ``cafe``,
``2048``), so every lookup of the CD agent by name goes through this module, one function per object
kind: it asks Docker, then keeps the answer only when its name (or full ID) is exactly the one asked
for; anything else counts as absent. Later calls then act on the ID the answer carries.

Volumes need no function here: Docker looks them up by exact name only. The agent reaches another
container's anonymous volumes only through a container lookup, which this module makes exact.

These return the engine's raw answer (a mapping); the adapters (``docker_gateway``, ``proxy``,
``swarm_services``) turn it into their own dataclasses and convert Docker's errors, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import docker
import docker.errors


def container(api: docker.APIClient, ref: str) -> Mapping[str, Any] | None:
    """The container named ``ref`` (or whose full ID is ``ref``), or None."""
    try:
        data: Mapping[str, Any] = api.inspect_container(ref)
    except docker.errors.NotFound:
        return None
    # The engine gives container names with a leading "/".
    return data if _exact(ref, str(data.get("Id") or ""), str(data.get("Name") or "").lstrip("/")) else None


def network(api: docker.APIClient, ref: str) -> Mapping[str, Any] | None:
    """The network named ``ref`` (or whose full ID is ``ref``), or None."""
    try:
        data: Mapping[str, Any] = api.inspect_network(ref)
    except docker.errors.NotFound:
        return None
    return data if _exact(ref, str(data.get("Id") or ""), str(data.get("Name") or "")) else None


def service(api: docker.APIClient, ref: str) -> Mapping[str, Any] | None:
    """The Swarm service named ``ref`` (or whose full ID is ``ref``), or None."""
    try:
        data: Mapping[str, Any] = api.inspect_service(ref)
    except docker.errors.NotFound:
        return None
    name = str((data.get("Spec") or {}).get("Name") or "")
    return data if _exact(ref, str(data.get("ID") or ""), name) else None


def _exact(ref: str, object_id: str, name: str) -> bool:
    return bool(ref) and ref in (object_id, name)
