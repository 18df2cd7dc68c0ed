"""An app and its database (issue 20, part 1) against the real engine: a stack made by hand with
``docker run`` on a user network, then a newer release deployed by the agent. The new container keeps
what the user set up (network, alias, static address, label, capabilities, memory/cpu/pids limits,
device, extra host, log option, user, working directory, health check option, command override),
takes the new image's ENV and HEALTHCHECK (which asks the database), and the database is never
touched."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cd_agent.container_spec import ContainerSpec, check_spec
from cd_agent.docker_gateway import DockerGateway
from cd_agent.engine import NetworkAttachment
from cd_agent.errors import DeployError
from cd_agent.proxy import network_name
from tests.support.cd_apps import AppReleases, CdWorld
from tests.support.docker_env import unique
from tests.support.polling import wait_for
from tests.support.stacks import COMMAND, DB_ANSWER, OPTIONS, Stack

pytestmark = pytest.mark.docker


def endpoint(container: dict[str, Any], network: str) -> dict[str, Any]:
    endpoint: dict[str, Any] = container["NetworkSettings"]["Networks"][network]
    return endpoint


def test_a_swap_keeps_what_docker_run_set_up_and_leaves_the_database_alone(
    cd_world: CdWorld, stack: Stack, stack_releases: AppReleases
) -> None:
    by_hand = stack.run_app(cd_world, "1.0.0")
    db_before = stack.db_identity()

    report = cd_world.deployer().deploy("1.1.0")

    assert report.outcome == "deployed", report
    app = cd_world.docker_client.api.inspect_container(cd_world.name)
    assert app["Id"] != by_hand and app["State"]["Health"]["Status"] == "healthy"  # asks http://db:8080/
    assert stack.fetch_in(cd_world.name, "http://db:8080/") == DB_ANSWER
    assert stack.fetch_in(stack.db, "http://web:8080/") == "1.1.0"  # the stack reaches it by its alias
    assert cd_world.served() == "1.1.0"  # published on the same port, the new image's ENV applies
    on_stack = endpoint(app, stack.network)
    assert "web" in on_stack["Aliases"] and on_stack["IPAMConfig"]["IPv4Address"] == stack.app_address
    assert list(app["NetworkSettings"]["Networks"]) == [stack.network]
    config, host = app["Config"], app["HostConfig"]
    assert config["Labels"]["com.example.team"] == "shop"
    assert [cap.removeprefix("CAP_") for cap in host["CapAdd"]] == [OPTIONS["cap_add"]]
    assert (str(host["Memory"]), host["ExtraHosts"]) == (OPTIONS["memory"], [OPTIONS["extra_host"]])
    assert [cap.removeprefix("CAP_") for cap in host["CapDrop"]] == [OPTIONS["cap_drop"]]
    assert (host["NanoCpus"], str(host["PidsLimit"])) == (int(float(OPTIONS["cpus"]) * 1e9), OPTIONS["pids_limit"])
    device = host["Devices"][0]
    assert f"{device['PathOnHost']}:{device['PathInContainer']}" == OPTIONS["device"]
    assert host["LogConfig"]["Config"] == dict([OPTIONS["log_opt"].split("=")]) and config["User"] == OPTIONS["user"]
    assert (config["Cmd"], config["WorkingDir"]) == (list(COMMAND), OPTIONS["workdir"])
    image = cd_world.docker_client.api.inspect_image(app["Image"])["Config"]["Healthcheck"]
    assert config["Healthcheck"] == {**image, "Retries": int(OPTIONS["health_retries"])}  # the new image's test
    assert cd_world.read_in_app("/tmp/started-by").strip() == "by-hand"
    assert stack.db_identity() == db_before


def test_cd_networks_puts_an_app_defined_by_settings_alone_beside_its_database(
    cd_world: CdWorld, stack: Stack, stack_releases: AppReleases
) -> None:
    db_before = stack.db_identity()

    report = cd_world.deployer(CD_NETWORKS=f"{stack.network}:web:shop-web").deploy("1.1.0")

    assert report.outcome == "deployed", report
    app = cd_world.docker_client.api.inspect_container(cd_world.name)
    assert app["State"]["Health"]["Status"] == "healthy"
    assert {"web", "shop-web"} <= set(endpoint(app, stack.network)["Aliases"])
    assert stack.fetch_in(stack.db, "http://shop-web:8080/") == "1.1.0"
    assert cd_world.served() == "1.1.0" and stack.db_identity() == db_before


def test_a_network_dropped_from_cd_networks_is_left_and_one_attached_by_hand_is_carried(
    cd_world: CdWorld, stack: Stack, stack_releases: AppReleases
) -> None:
    client = cd_world.docker_client
    dropped, by_hand = unique("picicd-dropped"), unique("picicd-by-hand")
    for name in (dropped, by_hand):
        client.networks.create(name)
        cd_world.janitor.networks.add(name)
    first = cd_world.deployer(CD_NETWORKS=f"{stack.network}:web,{dropped}").deploy("1.0.0")
    assert first.outcome == "deployed", first
    client.api.connect_container_to_network(cd_world.name, by_hand, aliases=["backup-target"])
    wait_for(lambda: stack.fetch_in(cd_world.name, "http://db:8080/") == DB_ANSWER, timeout=30,
             what="the app reaching its database after the connect by hand")

    report = cd_world.deployer(CD_NETWORKS=f"{stack.network}:web").deploy("1.1.0")

    assert report.outcome == "deployed", report
    app = client.api.inspect_container(cd_world.name)
    assert sorted(app["NetworkSettings"]["Networks"]) == sorted([stack.network, by_hand])
    assert "backup-target" in endpoint(app, by_hand)["Aliases"]
    assert app["Config"]["Labels"]["io.pi-cicd.networks"] == stack.network
    assert stack.fetch_in(stack.db, "http://web:8080/") == "1.1.0"


def test_blue_green_colours_join_the_stack_under_their_colour_and_web_is_the_proxys_through_a_rollback(
    cd_world: CdWorld, stack: Stack, stack_releases: AppReleases, caddy_image: str
) -> None:
    cd_world.overrides.update(CD_STRATEGY="blue-green", CD_PROXY_IMAGE=caddy_image, CD_PROXY_GRACE="1")
    db_before = stack.db_identity()
    assert cd_world.deployer(CD_NETWORKS=f"{stack.network}:web").deploy("1.0.0").outcome == "deployed"
    assert stack.fetch_in(stack.db, "http://web:8080/") == "1.0.0"
    # Limits given to the running colour by hand are kept too.
    cd_world.docker_client.api.update_container(cd_world.name, cpu_quota=50000, cpu_period=100000)

    # The same CD_NETWORKS (a network it drops is left: test_a_network_dropped_from_cd_networks_...).
    deployer = cd_world.deployer(CD_NETWORKS=f"{stack.network}:web")
    report = deployer.deploy("1.1.0")

    assert report.outcome == "deployed", report
    app = cd_world.docker_client.api.inspect_container(cd_world.name)
    assert app["State"]["Health"]["Status"] == "healthy"
    assert list(app["NetworkSettings"]["Networks"]) == sorted([network_name(cd_world.name), stack.network])
    assert "web" not in endpoint(app, stack.network)["Aliases"] and app["HostConfig"]["CpuQuota"] == 50000
    # `web` is the proxy's on the stack's network: the database's side reaches the live colour through it.
    proxy = cd_world.docker_client.api.inspect_container(f"{cd_world.name}-proxy")
    assert "web" in endpoint(proxy, stack.network)["Aliases"]
    wait_for(lambda: stack.fetch_in(stack.db, "http://web:8080/") == "1.1.0", timeout=10, what="web is 1.1.0")
    wait_for(lambda: cd_world.served() == "1.1.0", timeout=10, what="1.1.0 behind the proxy")

    assert deployer.rollback().outcome == "deployed"

    wait_for(lambda: stack.fetch_in(stack.db, "http://web:8080/") == "1.0.0", timeout=10, what="web is 1.0.0")
    assert cd_world.served() == "1.0.0"
    back = cd_world.docker_client.api.inspect_container(cd_world.name)
    assert "web" not in endpoint(back, stack.network)["Aliases"]
    assert stack.db_identity() == db_before


def test_an_app_made_by_compose_is_upgraded_and_still_listed_by_compose(
    cd_world: CdWorld, stack_releases: AppReleases, db_image: str, tmp_path: Path
) -> None:
    """Compose (Debian's docker-compose 1.29 here and in CI, else the v2 plugin) lists a service's
    containers by their com.docker.compose.* labels: the new release keeps them."""
    project = cd_world.name  # the containers' names start with it, the network is PROJECT_default
    cd_world.janitor.networks.add(f"{project}_default")
    compose_file = tmp_path / "compose.yml"
    compose_file.write_text(
        'version: "3.7"\n'
        "services:\n"
        f"  db:\n    image: {db_image}\n"
        f"  web:\n    image: {cd_world.releases.repository}:1.0.0\n"
        f'    ports: ["127.0.0.1:{cd_world.port}:8080"]\n'
        "    depends_on: [db]\n"
    )

    def compose(*args: str) -> str:
        program = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
        done = subprocess.run(
            [*program, "-p", project, "-f", str(compose_file), *args],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    cd_world.docker_client.images.pull(cd_world.releases.repository, tag="1.0.0")
    compose("up", "-d")
    web, db = (
        cd_world.docker_client.api.inspect_container(compose("ps", "-q", service).strip())["Name"].lstrip("/")
        for service in ("web", "db")
    )
    wait_for(lambda: Stack.health_of(cd_world.docker_client, web) == "healthy", timeout=30, what=f"{web} healthy")
    db_before = cd_world.docker_client.api.inspect_container(db)["State"]["StartedAt"]

    report = cd_world.deployer(CD_CONTAINER_NAME=web, CD_VOLUMES="").deploy("1.1.0")

    assert report.outcome == "deployed", report
    app = cd_world.docker_client.api.inspect_container(web)
    assert app["State"]["Health"]["Status"] == "healthy" and cd_world.served() == "1.1.0"
    assert compose("ps", "-q", "web").split() == [app["Id"]]
    assert cd_world.docker_client.api.inspect_container(db)["State"]["StartedAt"] == db_before


def test_the_gateway_creates_on_one_network_and_connects_the_others_and_a_missing_one_is_caught_first(
    cd_world: CdWorld, stack: Stack, db_image: str
) -> None:
    """The API (1.41) creates a container on one network: the others are connected before it starts,
    static addresses included. dockerd 20.10 connects a created container to a network that does not
    exist without a word (the start fails): ``check_spec`` is what catches it, before anything is made."""
    gateway = DockerGateway.from_env()
    second = f"{cd_world.name}-second"
    cd_world.docker_client.api.create_network(second, driver="bridge")
    cd_world.janitor.networks.add(second)
    spec = ContainerSpec(
        f"{cd_world.name}-made", db_image, restart_policy="no",
        networks=(NetworkAttachment(stack.network, ("web",), ipv4_address=stack.app_address),
                  NetworkAttachment(second, ("api",))),
    )
    try:
        made = gateway.create(spec)
        gateway.start(made)
        networks = cd_world.docker_client.api.inspect_container(made)["NetworkSettings"]["Networks"]
        assert networks[stack.network]["IPAddress"] == stack.app_address
        assert "web" in networks[stack.network]["Aliases"] and "api" in networks[second]["Aliases"]
        gateway.remove(made)

        missing = NetworkAttachment(f"{cd_world.name}-no-such-network")
        with pytest.raises(DeployError, match=f"network {missing.network} does not exist"):
            check_spec(gateway, replace(spec, networks=(*spec.networks, missing)))
        # A prefix of a network's id is not that network.
        assert gateway.network(stack.network) is not None
        assert gateway.network(cd_world.docker_client.api.inspect_network(second)["Id"][:6]) is None
    finally:
        gateway.close()
