"""The ports the blue-green proxy forwards: checked when the settings are read, so without Docker's SDK.

``cd_agent.proxy`` (which talks to Docker) uses it too; the settings of a blue-green app import only this.
"""

from __future__ import annotations

from collections.abc import Sequence

from cd_agent.errors import ProxyError
from cd_agent.settings import PortMapping


def proxied_ports(ports: Sequence[PortMapping]) -> tuple[int, ...]:
    """The container ports the proxy listens on (and forwards to the same port of the app).

    Caddy proxies HTTP over TCP only; a UDP or SCTP port is refused here, before anything is created.
    """
    if not ports:
        raise ProxyError("CD_PORTS is empty: the blue-green strategy needs at least one published port")
    wrong = [str(port) for port in ports if port.protocol != "tcp"]
    if wrong:
        raise ProxyError(
            f"CD_PORTS {', '.join(wrong)}: the blue-green proxy forwards HTTP over TCP only; "
            "use CD_STRATEGY=swap for apps that do not speak HTTP"
        )
    return tuple(sorted({port.container_port for port in ports}))
