"""Blue-green inside a stack: the app's aliases on its networks (``web`` on a compose project's network)
follow the live colour only.

A new colour joins the app's networks (the database's, ``CD_NETWORKS``) under its colour alias alone
(``NAME-green``): it reaches the database for its health check, but the stack's other services, which
ask for ``web``, never reach a release that is not proven. The aliases it will take are kept in a label
of its own (``io.pi-cicd.aliases``), so the switch, and a recovery after a kill, know them without the
old container. At the switch it takes them (``promote``: before the proxy sends it users); the old
colour keeps them through the grace period (both releases are proven) and drops them just before it is
stopped (``demote``: the stack's services are not sent to a process that is exiting), so a kept release
restarted by a rollback is unproven again until its own switch.

Docker cannot change the aliases of an endpoint: the container is disconnected from the network and
connected again, so connections it opened there during its health check are cut, before users reach it.
"""

from __future__ import annotations

import json
from dataclasses import replace

from cd_agent.container_spec import ContainerSpec
from cd_agent.engine import ContainerInfo, Engine, NetworkAttachment

LABEL_ALIASES = "io.pi-cicd.aliases"


def hold_back(spec: ContainerSpec, *, proxy_network: str, alias: str, colours: tuple[str, ...]) -> ContainerSpec:
    """``spec`` (a new colour, ``beside`` the old one) with only ``alias`` on the app's networks; the
    aliases it takes when proven (the colours' own left out) go to its label."""
    live: dict[str, list[str]] = {}
    networks = []
    for attachment in spec.networks:
        if attachment.network == proxy_network:
            networks.append(attachment)
            continue
        live[attachment.network] = [name for name in attachment.aliases if name not in colours]
        networks.append(replace(attachment, aliases=(alias,)))
    labels = {**spec.labels, LABEL_ALIASES: json.dumps(live, sort_keys=True, separators=(",", ":"))}
    return replace(spec, networks=tuple(networks), labels=labels)


def live_aliases(container: ContainerInfo) -> dict[str, tuple[str, ...]]:
    """The aliases ``container`` answers to on each of the app's networks once it serves (its label);
    empty for a container made before the label (it keeps what it has)."""
    try:
        data = json.loads(container.labels.get(LABEL_ALIASES) or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(network): tuple(str(name) for name in names) for network, names in data.items() if isinstance(names, list)
    }


def promote(engine: Engine, container: ContainerInfo, alias: str) -> list[str]:
    """Give ``container`` the app's aliases; returns the networks changed (none when it has them)."""
    return _set(engine, container, alias, live_aliases(container), live=True)


def demote(engine: Engine, container: ContainerInfo, alias: str, networks: dict[str, tuple[str, ...]]) -> list[str]:
    """Leave ``container`` only ``alias`` on the app's ``networks`` (its own label's, else the serving one's)."""
    return _set(engine, container, alias, live_aliases(container) or networks, live=False)


def _set(
    engine: Engine, container: ContainerInfo, alias: str, networks: dict[str, tuple[str, ...]], *, live: bool
) -> list[str]:
    current = {attachment.network: attachment for attachment in container.networks}
    changed = []
    for network, names in networks.items():
        wanted = (alias, *names) if live else (alias,)
        attachment = current.get(network)
        if attachment is not None and set(attachment.aliases) == set(wanted):
            continue
        base = attachment if attachment is not None else NetworkAttachment(network)
        engine.reattach(container.id, replace(base, aliases=wanted))
        changed.append(network)
    return changed
