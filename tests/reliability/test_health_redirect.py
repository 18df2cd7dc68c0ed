"""A release whose health path redirects the agent's probe to a listener only the host can reach (issue 17).

Real dockerd, real Caddy, blue-green: the agent probes the new container at its own address on the private
network; the release answers ``302 Location: http://127.0.0.1:PORT/`` where a real server on the agent's
loopback answers 200 to anyone who asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_blue_green import blue_green_world
from tests.support.cd_apps import AppReleases, CdWorld, start_with_cgi
from tests.support.docker_env import DockerJanitor
from tests.support.loopback_http import LoopbackHttp
from tests.support.polling import wait_for
from tests.support.registry_server import RegistryServer

pytestmark = pytest.mark.docker

Observed = Callable[[str], None]
# Expanded when the release starts: the Location is the release's $REDIRECT_TO.
REDIRECT = r"""printf 'HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n' "$REDIRECT_TO"
"""


@pytest.fixture
def world(
    docker_client: Any, docker_janitor: DockerJanitor, registry: RegistryServer, tmp_path: Path, caddy_image: str
) -> Iterator[CdWorld]:
    releases = AppReleases(docker_client, registry, docker_janitor)
    releases.push("1.0.0")
    made = blue_green_world(docker_client, docker_janitor, releases, tmp_path, caddy_image)
    yield made
    made.close()


@pytest.mark.reliability(
    "CD_STRATEGY=blue-green: release 1.1.0's CD_HEALTH_URL path answers `302 Location: http://127.0.0.1:PORT/`, "
    "where a host-only listener on the agent's loopback answers 200; 1.0.0 serving",
    "the redirect is not followed (another origin): the listener gets no request, 1.1.0 is judged unhealthy, "
    "removed and quarantined, 1.0.0 keeps serving, and the run log names the status and the Location "
    "(before: the agent followed it and deployed 1.1.0)",
)
def test_a_health_redirect_to_a_host_only_listener_is_a_failed_probe(world: CdWorld, observed: Observed) -> None:
    world.deploy_first("1.0.0")
    wait_for(lambda: world.served() == "1.0.0", timeout=20, what="1.0.0 behind the proxy")
    with LoopbackHttp(body=b"host-only: fine") as listener:
        location = listener.url + "private"
        world.releases.push("1.1.0", env={"REDIRECT_TO": location}, start=start_with_cgi("health", REDIRECT))
        deployer = world.deployer(CD_HEALTH_URL=world.url + "cgi-bin/health")

        report = deployer.deploy("1.1.0")

        assert listener.requests == []
    assert (report.outcome, report.quarantined) == ("rolled_back", True), report
    assert world.served() == "1.0.0"
    run = deployer.runs.list(kind="deploy")[0]
    assert run.log_path is not None
    log = Path(run.log_path).read_text()
    said = f"HTTP 302 redirect to {location!r}, not followed"
    assert said in log, log
    observed(f"{report.outcome}, quarantined; the run log: {said}; the listener got no request")
