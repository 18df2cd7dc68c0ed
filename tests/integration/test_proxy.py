"""The blue-green proxy against a real Caddy container (scripts/proxy-image, Debian's caddy) and real
busybox app containers on a private Docker network, reached through its published loopback port."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from cd_agent.errors import ProxyError
from cd_agent.proxy import LABEL_PROXY, ProxyController, network_name, proxy_sysctls
from tests.support.docker_env import DockerJanitor
from tests.support.polling import wait_for
from tests.support.ports import free_port, port_open
from tests.support.proxy_world import ProxyWorld
from tests.support.switch_probe import SwitchProbe

pytestmark = pytest.mark.docker


def test_created_proxy_serves_503_then_the_app_and_switches_without_a_failed_request(proxy_world: ProxyWorld) -> None:
    controller = proxy_world.controller()
    controller.ensure()
    wait_for(lambda: proxy_world.get().status_code == 503, timeout=20, what="the fresh proxy to answer 503")
    assert "no app deployed yet" in proxy_world.get().text

    a = proxy_world.start_app(controller, "A")
    controller.switch(a)
    proxy_world.wait_serving("A")
    b = proxy_world.start_app(controller, "B")

    with SwitchProbe(proxy_world.url, expected={"A", "B"}) as probe:
        for target, body in [(b, "B"), (a, "A"), (b, "B")]:
            controller.switch(target)
            probe.wait_for_body(body)
            probe.wait_for_more(5)

    assert probe.failures == []
    for client in ("fresh", "keepalive"):
        assert probe.bodies(client) == ["A", "B", "A", "B"], client
    print(f"max gap: fresh {probe.max_gap('fresh'):.3f}s, keep-alive {probe.max_gap('keepalive'):.3f}s")


def exec_ok(docker_client: Any, container: str, argv: list[str]) -> bool:
    run = docker_client.api.exec_create(container, argv)["Id"]
    docker_client.api.exec_start(run)
    return bool(docker_client.api.exec_inspect(run)["ExitCode"] == 0)


def test_a_request_in_flight_on_the_old_app_finishes_there_after_the_switch(
    proxy_world: ProxyWorld, docker_client: Any
) -> None:
    controller = proxy_world.controller()
    controller.ensure()
    a = proxy_world.start_app(controller, "A")
    b = proxy_world.start_app(controller, "B")
    controller.switch(a)
    proxy_world.wait_serving("A")

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, proxy_world.url + "cgi-bin/slow", timeout=30)
        wait_for(lambda: exec_ok(docker_client, a, ["test", "-f", "/tmp/slow-started"]), timeout=15,
                 what="the slow request to reach app A")
        started = time.monotonic()
        controller.switch(b)
        # switch() does not wait for the old upstream to drain (shown with -s): the deployer waits.
        print(f"switch took {time.monotonic() - started:.2f}s; slow request still in flight: {not slow.done()}")
        assert proxy_world.get().text == "B"
        answer = slow.result()

    assert (answer.status_code, answer.text) == (200, "slow A")


def test_the_published_ports_are_the_proxys_and_the_admin_api_is_not_published(
    proxy_world: ProxyWorld, docker_client: Any
) -> None:
    controller = proxy_world.controller()
    controller.ensure()
    inspected = docker_client.api.inspect_container(proxy_world.proxy_container)
    bindings = inspected["HostConfig"]["PortBindings"]
    assert bindings == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(proxy_world.port)}]}
    assert inspected["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert (inspected["HostConfig"].get("Sysctls") or {}) == proxy_sysctls()
    assert inspected["Config"]["Labels"][LABEL_PROXY] == proxy_world.name
    assert list(inspected["NetworkSettings"]["Networks"]) == [network_name(proxy_world.name)]
    # Caddy's admin endpoint answers inside the container only: not on the host, not on the network.
    address = controller.address(proxy_world.proxy_container)
    wait_for(lambda: port_open(8080, host=address), timeout=20, what="the proxy listening on the network")
    assert not port_open(2019, host=address)
    assert not port_open(2019)


def test_a_restarted_proxy_still_serves_the_last_upstream(proxy_world: ProxyWorld, docker_client: Any) -> None:
    controller = proxy_world.controller()
    controller.ensure()
    controller.switch(proxy_world.start_app(controller, "A"))
    controller.switch(proxy_world.start_app(controller, "B"))
    proxy_world.wait_serving("B")

    docker_client.api.restart(proxy_world.proxy_container, timeout=5)
    proxy_world.wait_serving("B")

    # Even a proxy removed by hand comes back from the agent's state, not from a file in the container.
    docker_client.api.remove_container(proxy_world.proxy_container, force=True, v=True)
    proxy_world.controller().ensure()
    proxy_world.wait_serving("B")


def test_an_existing_proxy_is_adopted_without_a_failed_request(proxy_world: ProxyWorld, docker_client: Any) -> None:
    first = proxy_world.controller()
    first.ensure()
    first.switch(proxy_world.start_app(first, "A"))
    proxy_world.wait_serving("A")
    created = docker_client.api.inspect_container(proxy_world.proxy_container)["Id"]

    with SwitchProbe(proxy_world.url, expected={"A"}) as probe:
        proxy_world.controller().ensure()  # a restarted agent: a new controller over the same state
        probe.wait_for_more(5)

    assert docker_client.api.inspect_container(proxy_world.proxy_container)["Id"] == created
    assert probe.failures == []


def test_a_stopped_proxy_is_started_again_on_adoption(proxy_world: ProxyWorld, docker_client: Any) -> None:
    controller = proxy_world.controller()
    controller.ensure()
    controller.switch(proxy_world.start_app(controller, "A"))
    docker_client.api.stop(proxy_world.proxy_container, timeout=5)

    proxy_world.controller().ensure()
    proxy_world.wait_serving("A")


def proxy_and_two_apps(proxy_world: ProxyWorld) -> tuple[ProxyController, str, str]:
    controller = proxy_world.controller()
    controller.ensure()
    return controller, proxy_world.start_app(controller, "A"), proxy_world.start_app(controller, "B")


def test_a_proxy_stopped_under_a_switch_is_started_and_takes_the_new_upstream(
    proxy_world: ProxyWorld, docker_client: Any
) -> None:
    controller, a, b = proxy_and_two_apps(proxy_world)
    controller.switch(a)
    docker_client.api.stop(proxy_world.proxy_container, timeout=5)  # the engine refuses an exec now (409)

    controller.switch(b)
    proxy_world.wait_serving("B")


def test_a_caddy_that_exits_during_switches_is_waited_for_under_its_restart_policy(
    proxy_world: ProxyWorld, docker_client: Any
) -> None:
    controller, a, b = proxy_and_two_apps(proxy_world)
    for target in (a, b, a, b):
        # Caddy's process exits (code 0) and Docker starts it again after its backoff: the reload lands in a
        # container that is exiting, restarting, or starting, which the switch waits through.
        exec_ok(docker_client, proxy_world.proxy_container, ["caddy", "stop", "--address", "localhost:2019"])
        controller.switch(target)
    proxy_world.wait_serving("B")
    assert docker_client.api.inspect_container(proxy_world.proxy_container)["RestartCount"] >= 1


def test_a_proxy_created_for_a_stack_joins_its_network_before_it_starts(
    proxy_world: ProxyWorld, docker_client: Any, docker_janitor: DockerJanitor
) -> None:
    # Sorts before the proxy's own network: Docker gives the default route, and the published ports, to the
    # first network by name; joined while running, the ports would move there under the users.
    stack = f"a{proxy_world.name}_default"
    assert stack < network_name(proxy_world.name)
    docker_client.api.create_network(stack, driver="bridge")
    docker_janitor.networks.add(stack)
    since = int(time.time()) - 1

    proxy_world.controller().ensure({stack: ("web",)})

    proxy = docker_client.api.inspect_container(proxy_world.proxy_container)
    assert proxy["NetworkSettings"]["Networks"][stack]["Aliases"][:1] == ["web"]
    wait_for(lambda: proxy_world.get().status_code == 503, timeout=20, what="the proxy to answer on its port")
    events = docker_client.api.events(since=since, until=int(time.time()) + 1, decode=True)
    seen = [
        (event.get("Type"), event.get("Action"))
        for event in events
        if proxy["Id"] in (event.get("id"), (event.get("Actor") or {}).get("Attributes", {}).get("container"))
    ]
    assert seen.index(("network", "connect"), seen.index(("container", "create"))) < seen.index(
        ("container", "start")
    ), seen


def test_changed_ports_recreate_the_proxy(proxy_world: ProxyWorld) -> None:
    controller = proxy_world.controller()
    controller.ensure()
    controller.switch(proxy_world.start_app(controller, "A"))
    proxy_world.wait_serving("A")

    new_port = free_port()
    proxy_world.controller(port=new_port).ensure()
    proxy_world.wait_serving("A", port=new_port)


def test_a_foreign_container_under_the_proxys_name_is_left_alone(
    proxy_world: ProxyWorld, docker_client: Any
) -> None:
    docker_client.api.create_container(proxy_world.app_image, name=proxy_world.proxy_container, detach=True)
    foreign = docker_client.api.inspect_container(proxy_world.proxy_container)["Id"]

    with pytest.raises(ProxyError, match="is not pi-cicd's proxy"):
        proxy_world.controller().ensure()
    assert docker_client.api.inspect_container(proxy_world.proxy_container)["Id"] == foreign


def test_remove_leaves_no_container_no_network_and_no_volume(
    proxy_world: ProxyWorld, docker_client: Any, docker_janitor: DockerJanitor
) -> None:
    # Shaped like the official caddy:2 image, which declares VOLUME /config /data.
    image = f"{proxy_world.name}-volumes:test"
    dockerfile = f"FROM {proxy_world.proxy_image}\nVOLUME /config /data\n"
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=image, rm=True)
    docker_janitor.images.add(image)
    controller = proxy_world.controller(image=image)
    controller.ensure()
    mounts = docker_client.api.inspect_container(proxy_world.proxy_container)["Mounts"]
    volumes = {mount["Name"] for mount in mounts if mount["Type"] == "volume"}
    assert len(volumes) == 2

    controller.remove()

    assert docker_client.api.containers(all=True, filters={"name": proxy_world.proxy_container}) == []
    assert docker_client.api.networks(names=[network_name(proxy_world.name)]) == []
    remaining = {volume["Name"] for volume in docker_client.api.volumes()["Volumes"] or []}
    assert volumes.isdisjoint(remaining)
