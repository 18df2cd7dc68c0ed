"""What the blue-green proxy tells the app about the client, and whom Caddy runs as (issue 17).

Real dockerd, the real Caddy image (scripts/proxy-image), a busybox release with a CGI that prints the
forwarding headers it received.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cd_agent.proxy import network_name, proxy_container_name
from tests.integration.test_blue_green import blue_green_world
from tests.support.cd_apps import AppReleases, CdWorld, start_with_cgi
from tests.support.docker_env import DockerJanitor
from tests.support.polling import wait_for
from tests.support.registry_server import RegistryServer

pytestmark = pytest.mark.docker

Observed = Callable[[str], None]
FORGED = "203.0.113.66"
# "\$": read when each request runs the CGI (the request's headers), not when the app starts.
HEADERS = r"""printf 'Content-Type: text/plain\r\n\r\n%s|%s' "\$HTTP_X_REAL_IP" "\$HTTP_X_FORWARDED_FOR"
"""


@pytest.fixture
def world(
    docker_client: Any, docker_janitor: DockerJanitor, registry: RegistryServer, tmp_path: Path, caddy_image: str
) -> Iterator[CdWorld]:
    releases = AppReleases(docker_client, registry, docker_janitor)
    releases.push("1.0.0", start=start_with_cgi("headers", HEADERS))
    made = blue_green_world(docker_client, docker_janitor, releases, tmp_path, caddy_image)
    made.deploy_first("1.0.0")
    wait_for(lambda: made.served() == "1.0.0", timeout=20, what="1.0.0 behind the proxy")
    yield made
    made.close()


@pytest.mark.reliability(
    f"A client sends `X-Real-IP: {FORGED}` and `X-Forwarded-For: {FORGED}` through the blue-green proxy",
    "the app receives X-Real-IP and X-Forwarded-For both set to the address the proxy saw the client connect "
    "from, never the forged one (before: X-Real-IP reached the app as the client wrote it)",
)
def test_a_forged_x_real_ip_reaches_the_app_as_the_real_address(world: CdWorld, observed: Observed) -> None:
    answer = httpx.get(world.url + "cgi-bin/headers", headers={"X-Real-IP": FORGED, "X-Forwarded-For": FORGED},
                       timeout=5)

    assert answer.status_code == 200, answer.text
    real_ip, forwarded_for = answer.text.split("|")
    gateways = [c.get("Gateway") for c in world.docker_client.api.inspect_network(
        network_name(world.name))["IPAM"]["Config"]]
    assert FORGED not in answer.text, answer.text
    assert real_ip == forwarded_for and real_ip in ("127.0.0.1", *gateways), answer.text
    observed(f"the app saw X-Real-IP {real_ip}, X-Forwarded-For {forwarded_for}")


@pytest.mark.reliability(
    "The blue-green proxy container made by the agent from scripts/proxy-image's Caddy, serving on CD_PORTS",
    "every process in it runs as uid 65532, none as root (before: Caddy ran as root)",
)
def test_caddy_runs_as_a_non_root_user(world: CdWorld, observed: Observed) -> None:
    top = world.docker_client.api.top(proxy_container_name(world.name), ps_args="-o pid,uid,comm")
    uids = sorted({row[1] for row in top["Processes"]})

    assert uids == ["65532"], top
    assert world.served() == "1.0.0"
    observed(f"processes in {proxy_container_name(world.name)}: {top['Processes']}")
