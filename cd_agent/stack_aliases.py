"""Blue-green inside a stack: the app's aliases on its networks (``web`` on a compose project's network)
belong to the proxy, never to a colour.

A colour joins the app's networks (the database's, ``CD_NETWORKS``) under its colour alias alone
(``NAME-green``): it reaches the database for its health check, but the stack's other services, which
ask for ``web``, never reach a release directly. The proxy joins those networks answering to the app's
aliases (``ProxyController.serve_on``), so the stack's services reach the app as users do, through the
proxy's switch: only a proven release, and a switch that lets requests in flight finish on the old one.

Why not move the alias between the colours: Docker cannot change an endpoint's aliases, so moving one
means disconnecting a colour from the network and connecting it again. Measured with
tests/integration/test_stack_blue_green.py against Docker 20.10, that cut requests in flight (a worker
that had just resolved ``web`` to the old colour's address waited ~1 s and failed, in 2 runs of 3), and
the address a colour gives back is handed at once to the next container that joins (the IPAM reuses
the lowest free address: the bad release got the address ``web`` had resolved to seconds before).

The aliases to serve are kept in a label of each colour (``io.pi-cicd.aliases``), so a later deploy,
a recovery after a kill and a re-created proxy know them without the old container's settings.
A colour made before (it answers to ``web`` itself) drops them once the proxy has them, before it stops.
"""

from __future__ import annotations

import json
from dataclasses import replace

from cd_agent.container_spec import ContainerSpec
from cd_agent.engine import ContainerInfo, Engine

LABEL_ALIASES = "io.pi-cicd.aliases"


def hold_back(
    spec: ContainerSpec, *, proxy_network: str, alias: str, colours: tuple[str, ...],
    inherited: dict[str, tuple[str, ...]], named: frozenset[str] = frozenset(),
) -> ContainerSpec:
    """``spec`` (a new colour, ``beside`` the old one) with only ``alias`` on the app's networks; the
    app's aliases there go to its label: ``CD_NETWORKS``' for the networks it ``named``, else the old
    colour's label's (``inherited``) and what the old container answered to itself (the colours' left out)."""
    live: dict[str, list[str]] = {}
    networks = []
    for attachment in spec.networks:
        if attachment.network == proxy_network:
            networks.append(attachment)
            continue
        own = [name for name in attachment.aliases if name not in colours]
        if attachment.network not in named:
            own = list(dict.fromkeys((*inherited.get(attachment.network, ()), *own)))
        live[attachment.network] = own
        networks.append(replace(attachment, aliases=(alias,)))
    labels = {**spec.labels, LABEL_ALIASES: json.dumps(live, sort_keys=True, separators=(",", ":"))}
    return replace(spec, networks=tuple(networks), labels=labels)


def live_aliases(container: ContainerInfo) -> dict[str, tuple[str, ...]]:
    """The app's aliases on each of its networks, which the proxy answers to while ``container`` serves
    (its label); empty for a container made before the label (it answers to them itself)."""
    try:
        data = json.loads(container.labels.get(LABEL_ALIASES) or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(network): tuple(str(name) for name in names) for network, names in data.items() if isinstance(names, list)
    }


def demote(engine: Engine, container: ContainerInfo, alias: str, networks: dict[str, tuple[str, ...]]) -> list[str]:
    """Leave ``container`` only ``alias`` on the app's ``networks`` (its own label's, else the serving one's):
    a colour made before the proxy served the app's aliases answers to them itself. Nothing is done (no
    reconnect) when it answers to ``alias`` alone; returns the networks changed."""
    current = {attachment.network: attachment for attachment in container.networks}
    changed = []
    for network in live_aliases(container) or networks:
        attachment = current.get(network)
        if attachment is None or set(attachment.aliases) <= {alias}:
            continue
        engine.reattach(container.id, replace(attachment, aliases=(alias,)))
        changed.append(network)
    return changed
