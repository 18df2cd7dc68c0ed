"""CD_STRATEGY=swarm against a real single-node swarm and the test registry.

This kernel has no IPVS, so the ingress routing mesh does not forward published ports: a published port
is checked in host mode, and the replicas are read inside their task containers.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from cd_agent.container_spec import LABEL_MANAGED
from tests.support.cd_apps import SILENT, cd_agent, kill_deploy_at
from tests.support.oci_index import S390X, Publisher, engine_of
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.swarm_env import MONITOR_S, SwarmWorld

pytestmark = pytest.mark.docker


def _pinned(world: SwarmWorld, version: str, name: str | None = None) -> str:
    image = str(world.service(name).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])
    assert image.startswith(f"{world.world.releases.repository}:{version}@sha256:"), image
    return image


def test_a_missing_service_is_created_from_the_settings(swarm_world: SwarmWorld) -> None:
    swarm_world.world.releases.push("1.0.0", "healthcheck")
    port = free_port()
    env_file = swarm_world.world.root / "app.env"
    env_file.write_text("GREETING=from-the-env-file\n")
    deployer = swarm_world.deployer(
        CD_PORTS=f"{port}:8080", CD_ENV_FILE=str(env_file), CD_RESTART_POLICY="on-failure",
        CD_UPDATE_ORDER="stop-first",  # host-mode ports: one task per node can hold the port
    )

    report = deployer.deploy("1.0.0")

    assert report.outcome == "deployed", report
    spec = swarm_world.service().attrs["Spec"]
    assert spec["Labels"][LABEL_MANAGED] == "true"
    assert spec["Mode"]["Replicated"]["Replicas"] == 1
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "on-failure"
    assert "GREETING=from-the-env-file" in spec["TaskTemplate"]["ContainerSpec"]["Env"]
    mounts = spec["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert [(m["Source"], m["Target"], m["Type"]) for m in mounts] == [(swarm_world.world.volume, "/data", "volume")]
    assert spec["UpdateConfig"]["FailureAction"] == "rollback" and spec["UpdateConfig"]["Parallelism"] == 1
    assert spec["UpdateConfig"]["Monitor"] == MONITOR_S * 10**9
    ports = spec["EndpointSpec"]["Ports"]
    assert [(p["TargetPort"], p["PublishedPort"], p["PublishMode"]) for p in ports] == [(8080, port, "host")]
    _pinned(swarm_world, "1.0.0")
    assert httpx.get(f"http://127.0.0.1:{port}/greeting.txt", timeout=5).text == "from-the-env-file"
    current = deployer.state.current
    assert current is not None and current.version == "1.0.0" and current.digest == report.digest
    run = deployer.runs.get(report.run or 0)
    assert run is not None and run.status == "succeeded"
    deployer.notifier.flush(10)
    assert [email.subject for email in swarm_world.world.mailer.sent] == [f"[{swarm_world.world.name}] deployed 1.0.0"]


def test_an_upgrade_rolls_across_two_replicas_and_keeps_start_first(swarm_world: SwarmWorld) -> None:
    releases = swarm_world.world.releases
    releases.push("1.0.0", "healthcheck")
    releases.push("1.1.0", "healthcheck")
    deployer = swarm_world.deployer(CD_REPLICAS="2")
    assert deployer.deploy("1.0.0").outcome == "deployed"
    assert swarm_world.served_by_tasks() == ["1.0.0", "1.0.0"]

    report = deployer.deploy("1.1.0")

    assert report.outcome == "deployed", report
    assert report.previous == "1.0.0"
    _pinned(swarm_world, "1.1.0")
    assert swarm_world.service().attrs["Spec"]["UpdateConfig"]["Order"] == "start-first"
    wait_for(lambda: swarm_world.served_by_tasks() == ["1.1.0", "1.1.0"], timeout=30, what="both replicas on 1.1.0")
    current, previous = deployer.state.current, deployer.state.previous
    assert current is not None and current.version == "1.1.0"
    assert previous is not None and previous.version == "1.0.0"
    node = swarm_world.world.docker_client.info()["Name"]
    environ = swarm_world.world.environ(CD_REPLICAS="2")
    shown = cd_agent("status", environ=environ, cwd=swarm_world.world.root)
    assert shown.returncode == 0, shown.stderr
    assert f"{swarm_world.name}: 2 replicas of 1.1.0" in shown.stdout
    assert shown.stdout.count(f": 1.1.0 on {node}, running") == 2, shown.stdout
    as_json = json.loads(cd_agent("status", "--json", environ=environ, cwd=swarm_world.world.root).stdout)
    assert [(t["version"], t["node"]) for t in as_json["service"]["tasks"]] == [("1.1.0", node)] * 2


def test_a_service_made_by_docker_stack_deploy_is_adopted_as_it_is(swarm_world: SwarmWorld) -> None:
    releases = swarm_world.world.releases
    releases.push("0.9.0", "healthcheck")
    releases.push("1.0.0", "healthcheck")
    stack = swarm_world.stack_deploy(
        "version: '3.8'\n"
        "services:\n"
        "  web:\n"
        f"    image: {releases.repository}:0.9.0\n"
        "    environment:\n"
        "      GREETING: from-the-stack\n"
        "    deploy:\n"
        "      replicas: 2\n"
        "      update_config: {order: start-first, failure_action: rollback, monitor: 5s}\n"
    )
    name = f"{stack}_web"
    wait_for(lambda: swarm_world.served_by_tasks(name) == ["0.9.0", "0.9.0"], timeout=60, what="the stack running")
    deployer = swarm_world.deployer(CD_SERVICE=name)
    assert deployer.reconcile().startswith("state said nothing")

    report = deployer.deploy("1.0.0")

    assert report.outcome == "deployed", report
    assert report.previous == "0.9.0"
    spec = swarm_world.service(name).attrs["Spec"]
    assert spec["Labels"]["com.docker.stack.namespace"] == stack
    assert LABEL_MANAGED not in spec["Labels"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 2
    assert "GREETING=from-the-stack" in spec["TaskTemplate"]["ContainerSpec"]["Env"]
    _pinned(swarm_world, "1.0.0", name)
    wait_for(lambda: swarm_world.served_by_tasks(name) == ["1.0.0", "1.0.0"], timeout=30, what="the stack on 1.0.0")


def test_a_release_whose_healthcheck_fails_is_rolled_back_by_swarm_and_quarantined(swarm_world: SwarmWorld) -> None:
    releases = swarm_world.world.releases
    releases.push("1.0.0", "healthcheck")
    releases.push("1.1.0", "healthcheck", start=SILENT)
    deployer = swarm_world.deployer(CD_REPLICAS="2")
    assert deployer.deploy("1.0.0").outcome == "deployed"

    report = deployer.deploy("1.1.0")

    assert report.outcome == "rolled_back", report
    assert report.quarantined and deployer.state.is_quarantined("1.1.0")
    assert report.error is not None and "rollback_completed" in report.error
    assert "failing task" in report.error and "on node" in report.error
    assert report.log_tail is not None and "waiting for a database that never comes" in report.log_tail
    _pinned(swarm_world, "1.0.0")
    current = deployer.state.current
    assert current is not None and current.version == "1.0.0"
    assert deployer.state.journal is None
    deployer.notifier.flush(10)
    email = swarm_world.world.mailer.sent[-1]
    assert "1.1.0" in email.subject
    assert "waiting for a database that never comes" in email.body


def test_an_agent_killed_mid_update_finishes_its_bookkeeping_when_started_again(swarm_world: SwarmWorld) -> None:
    releases = swarm_world.world.releases
    releases.push("1.0.0", "healthcheck")
    releases.push("1.1.0", "healthcheck")
    deployer = swarm_world.deployer()
    assert deployer.deploy("1.0.0").outcome == "deployed"
    deployer.state.close()

    kill_deploy_at(swarm_world.world, "created", "1.1.0")

    restarted = swarm_world.deployer()
    journal = restarted.state.journal
    assert journal is not None and journal.version == "1.1.0"
    message = restarted.reconcile()

    assert "Swarm completed it" in message, message
    current, previous = restarted.state.current, restarted.state.previous
    assert current is not None and current.version == "1.1.0"
    assert previous is not None and previous.version == "1.0.0"
    assert restarted.state.journal is None
    runs = restarted.runs.list(kind="deploy")
    assert [run.status for run in runs if run.version == "1.1.0"] == ["succeeded"]
    _pinned(swarm_world, "1.1.0")
    assert Path(restarted.target.paths.state).exists()


def test_a_release_lacking_a_nodes_platform_is_refused_naming_the_node(swarm_world: SwarmWorld) -> None:
    world = swarm_world.world
    publisher = Publisher.for_image(world.releases.repository)
    try:
        publisher.index("3.0.0", [publisher.foreign_image(S390X)])
    finally:
        publisher.close()
    world.janitor.images.add(f"{world.releases.repository}:3.0.0")
    node = world.docker_client.info()["Name"]

    result = cd_agent("deploy", "3.0.0", environ=world.environ(), cwd=world.root)

    assert result.returncode == 1, result.stderr
    expected = f"3.0.0 has no image for {engine_of(world.docker_client)} (node {node}); it offers linux/s390x"
    assert expected in result.stderr
    assert not world.docker_client.services.list(filters={"name": swarm_world.name})
