"""The blue-green proxy (real Caddy from scripts/proxy-image, busybox apps) when things break around it."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import pytest

from cd_agent.errors import ProxyError
from cd_agent.proxy import ProxyStateFile
from tests.support.polling import wait_for
from tests.support.proxy_world import ProxyWorld

pytestmark = pytest.mark.docker

Observed = Callable[[str], None]


@pytest.mark.reliability(
    "The proxy's Caddy process is SIGKILLed (as the OOM killer would) while it serves app B",
    "Docker restarts it (restart policy unless-stopped) and it serves B again, without the agent",
)
def test_a_killed_proxy_comes_back_serving_the_last_upstream(
    proxy_world: ProxyWorld, docker_client: Any, observed: Observed
) -> None:
    controller = proxy_world.controller()
    controller.ensure()
    controller.switch(proxy_world.start_app(controller, "A"))
    controller.switch(proxy_world.start_app(controller, "B"))
    proxy_world.wait_serving("B")
    pid = docker_client.api.inspect_container(proxy_world.proxy_container)["State"]["Pid"]

    os.kill(pid, signal.SIGKILL)

    wait_for(
        lambda: docker_client.api.inspect_container(proxy_world.proxy_container)["RestartCount"] >= 1,
        timeout=30,
        what="Docker to restart the proxy",
    )
    proxy_world.wait_serving("B")
    restarts = docker_client.api.inspect_container(proxy_world.proxy_container)["RestartCount"]
    observed(f"restarted by Docker ({restarts}x), serving {proxy_world.get().text!r} again")


@pytest.mark.reliability(
    "The agent dies after recording a switch to B in its state but before Caddy loaded it",
    "at the next start, ensure() makes the proxy serve B (the state wins), with the same container",
)
def test_the_state_wins_after_an_interrupted_switch(
    proxy_world: ProxyWorld, docker_client: Any, observed: Observed
) -> None:
    controller = proxy_world.controller()
    controller.ensure()
    controller.switch(proxy_world.start_app(controller, "A"))
    b = proxy_world.start_app(controller, "B")
    proxy_world.wait_serving("A")
    created = docker_client.api.inspect_container(proxy_world.proxy_container)["Id"]
    ProxyStateFile(proxy_world.state_dir / "proxy.json").set_upstream(b)  # switch()'s first step, then death

    proxy_world.controller().ensure()

    proxy_world.wait_serving("B")
    assert docker_client.api.inspect_container(proxy_world.proxy_container)["Id"] == created
    observed(f"serving {proxy_world.get().text!r} from the same proxy container after ensure()")


@pytest.mark.reliability(
    "The proxy's host port (CD_PORTS) is already taken by a foreign listener when the proxy is created",
    "a clear error naming the proxy and the port, no proxy container left behind",
)
def test_a_taken_host_port_fails_clearly_and_leaves_no_proxy(
    proxy_world: ProxyWorld, docker_client: Any, observed: Observed
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as foreign:
        foreign.bind(("127.0.0.1", proxy_world.port))
        foreign.listen(1)

        with pytest.raises(ProxyError) as raised:
            proxy_world.controller().ensure()

    message = str(raised.value)
    assert proxy_world.proxy_container in message
    assert f"127.0.0.1:{proxy_world.port}:8080/tcp" in message
    assert docker_client.api.containers(all=True, filters={"name": proxy_world.proxy_container}) == []
    observed(f"ProxyError '{message[:90]}...{message[-60:]}'; no proxy container left")
