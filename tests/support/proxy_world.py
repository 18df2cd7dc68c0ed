"""A real Caddy proxy container (``scripts/proxy-image``) in front of busybox app containers.

Each app container serves its ``$BODY`` at ``/`` on port 8080 and joins the world's private network
under its own alias, as the blue-green deployer's containers will. Everything is named after the
world (``picicd-px-…``) and removed at the end: containers, their volumes, the network.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from cd_agent.proxy import DockerProxyEngine, ProxyController, ProxyStateFile, network_name
from cd_agent.settings import parse_ports
from tests.support.docker_env import DockerJanitor, build_context_tar, busybox_dockerfile, unique
from tests.support.polling import wait_for
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
APP_PORT = 8080
# ``/`` answers $BODY; ``/cgi-bin/slow`` touches /tmp/slow-started, then answers "slow $BODY" after
# $SLOW_S seconds: a request still in flight on the old app while the proxy switches.
APP_START = r"""#!/bin/sh
mkdir -p /www/cgi-bin /tmp
printf %s "$BODY" > /www/index.html
cat > /www/cgi-bin/slow <<SCRIPT
#!/bin/sh
touch /tmp/slow-started
sleep ${SLOW_S:-3}
printf 'Content-Type: text/plain\r\n\r\nslow %s' "$BODY"
SCRIPT
chmod +x /www/cgi-bin/slow
exec httpd -f -p 8080 -h /www
"""


def proxy_image() -> str:
    """The local Caddy image, built from Debian's package the first time (its last line of stdout)."""
    done = subprocess.run(
        [str(REPO / "scripts" / "proxy-image")], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"scripts/proxy-image failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


def build_app_image(client: Any) -> str:
    tag = f"{unique('picicd-pxapp')}:test"
    client.images.build(
        fileobj=build_context_tar(busybox_dockerfile(cmd=["/bin/sh", "/start.sh"]), {"/start.sh": APP_START}),
        custom_context=True,
        tag=tag,
        rm=True,
    )
    return tag


@dataclass
class ProxyWorld:
    client: Any
    janitor: DockerJanitor
    proxy_image: str
    app_image: str
    state_dir: Path
    name: str = field(default_factory=lambda: unique("picicd-px"))
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.janitor.name_prefixes.add(self.name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def proxy_container(self) -> str:
        return f"{self.name}-proxy"

    def controller(
        self, *, port: int | None = None, image: str | None = None, keepalive: bool = False
    ) -> ProxyController:
        return ProxyController(
            DockerProxyEngine(self.client),
            ProxyStateFile(self.state_dir / "proxy.json"),
            app=self.name,
            image=image or self.proxy_image,
            ports=parse_ports(f"127.0.0.1:{port or self.port}:{APP_PORT}"),
            grace_period_s=5,
            keepalive=keepalive,
        )

    def start_app(self, controller: ProxyController, body: str) -> str:
        """Start an app container answering ``body``, attached as alias ``<name>-<body>``; returns the alias
        once it answers on its private address (the direct health check the deployer will do)."""
        container = alias = f"{self.name}-{body.lower()}"
        self.client.api.create_container(self.app_image, name=container, environment={"BODY": body}, detach=True)
        controller.attach(container, alias)
        self.client.api.start(container)

        def answers() -> bool:
            response = httpx.get(f"http://{controller.address(container)}:{APP_PORT}/", timeout=1)
            return response.status_code == 200 and response.text == body

        wait_for(answers, timeout=15, what=f"app {body} on the private network")
        return alias

    def get(self, port: int | None = None) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{port or self.port}/", timeout=2)

    def wait_serving(self, body: str, port: int | None = None) -> None:
        wait_for(
            lambda: (r := self.get(port)).status_code == 200 and r.text == body,
            timeout=20,
            what=f"the proxy to serve {body!r}",
        )

    def cleanup(self) -> None:
        self.janitor.cleanup()
        try:
            self.client.api.remove_network(network_name(self.name))
        except docker.errors.NotFound:
            pass


@pytest.fixture(scope="session")
def caddy_image() -> str:
    try:
        return proxy_image()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def proxy_app_image(docker_client: Any) -> Iterator[str]:
    tag = build_app_image(docker_client)
    yield tag
    try:
        docker_client.images.remove(tag, force=True)
    except docker.errors.APIError:
        pass


@pytest.fixture
def proxy_world(
    docker_client: Any, docker_janitor: DockerJanitor, caddy_image: str, proxy_app_image: str, tmp_path: Path
) -> Iterator[ProxyWorld]:
    world = ProxyWorld(docker_client, docker_janitor, caddy_image, proxy_app_image, tmp_path / "state")
    try:
        yield world
    finally:
        world.cleanup()
