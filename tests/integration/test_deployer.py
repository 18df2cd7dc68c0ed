"""The deployer against the real Docker Engine and registry: deploy, upgrade, data, ENV/CMD, adoption."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cd_agent.container_spec import LABEL_MANAGED, LABEL_VERSION
from cd_agent.errors import NothingToDeploy
from tests.support.cd_apps import CdWorld
from tests.support.polling import wait_for

pytestmark = pytest.mark.docker


def test_from_nothing_the_release_is_deployed_and_recorded(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0")
    deployer = cd_world.deployer()

    report = deployer.deploy("1.0.0")

    assert report.outcome == "deployed", report
    assert report.previous is None
    assert cd_world.served() == "1.0.0"
    container = cd_world.docker_client.containers.get(cd_world.name)
    assert container.labels[LABEL_MANAGED] == "true"
    assert container.labels[LABEL_VERSION] == "1.0.0"
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    current = deployer.state.current
    assert current is not None and current.version == "1.0.0" and current.container_id == container.id
    assert current.digest is not None and current.digest.startswith("sha256:")
    assert deployer.state.journal is None
    run = deployer.runs.get(report.run or 0)
    assert run is not None and run.status == "succeeded" and run.kind == "deploy" and run.version == "1.0.0"
    assert run.log_path is not None and "pulling" in Path(run.log_path).read_text()
    deployer.notifier.flush(10)
    assert [email.subject for email in cd_world.mailer.sent] == [f"[{cd_world.name}] deployed 1.0.0"]


def test_upgrade_serves_the_new_version_and_keeps_data_in_named_and_anonymous_volumes(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0")
    cd_world.releases.push("1.1.0")
    deployer = cd_world.deployer()
    deployer.deploy("1.0.0")
    anonymous = _cache_volume(cd_world)

    report = deployer.deploy("1.1.0")

    assert report.outcome == "deployed", report
    assert report.previous == "1.0.0"
    assert cd_world.served() == "1.1.0"
    assert cd_world.read_in_app("/data/history").split() == ["1.0.0", "1.1.0"]
    assert cd_world.read_in_app("/cache/history").split() == ["1.0.0", "1.1.0"]
    assert _cache_volume(cd_world) == anonymous
    # the old container is gone, its image is kept for a rollback
    assert cd_world.containers() == [cd_world.name]
    assert cd_world.docker_client.images.get(f"{cd_world.releases.repository}:1.0.0")
    previous = deployer.state.previous
    assert previous is not None and previous.version == "1.0.0"


def test_manual_rollback_returns_to_the_previous_version_with_its_data_and_stays_there(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0")
    cd_world.releases.push("1.1.0")
    deployer = cd_world.deployer()
    deployer.deploy("1.0.0")
    deployer.deploy("1.1.0")

    report = deployer.rollback()

    assert report.outcome == "deployed", report
    assert cd_world.served() == "1.0.0"
    assert cd_world.read_in_app("/data/history").split() == ["1.0.0", "1.1.0", "1.0.0"]
    assert cd_world.read_in_app("/cache/history").split() == ["1.0.0", "1.1.0", "1.0.0"]
    current, previous = deployer.state.current, deployer.state.previous
    assert current is not None and current.version == "1.0.0"
    assert previous is not None and previous.version == "1.1.0"
    # the watcher must not bring 1.1.0 straight back
    assert deployer.state.is_quarantined("1.1.0")
    with pytest.raises(NothingToDeploy, match="quarantined"):
        deployer.deploy("1.1.0")
    deployer.notifier.flush(10)
    assert cd_world.mailer.sent[-1].subject == f"[{cd_world.name}] rolled back to 1.0.0"


def test_a_new_image_env_and_cmd_take_effect(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0", env={"GREETING": "hello"})
    changed_start = (
        "#!/bin/sh\nmkdir -p /www2\nprintf '%s' \"$APP_VERSION\" > /www2/index.html\n"
        "printf 'new cmd says %s' \"$GREETING\" > /www2/greeting.txt\n"
        "trap 'kill $pid; exit 0' TERM\nhttpd -f -p 8080 -h /www2 &\npid=$!\nwait\n"
    )
    cd_world.releases.push("2.0.0", env={"GREETING": "bonjour"}, start=changed_start)
    env_file = cd_world.root / "app.env"
    env_file.write_text("# the user's settings\nDATABASE_URL=sqlite:////data/app.db\n")
    deployer = cd_world.deployer(CD_ENV_FILE=str(env_file))
    deployer.deploy("1.0.0")
    assert cd_world.served("greeting.txt") == "hello"

    deployer.deploy("2.0.0")

    assert cd_world.served("greeting.txt") == "new cmd says bonjour"
    env = cd_world.docker_client.containers.get(cd_world.name).attrs["Config"]["Env"]
    assert "GREETING=bonjour" in env and "APP_VERSION=2.0.0" in env
    assert "DATABASE_URL=sqlite:////data/app.db" in env


def test_a_foreign_container_is_adopted_as_the_previous_version(cd_world: CdWorld) -> None:
    foreign = cd_world.releases.push("0.9.0", keep_local=True)
    cd_world.releases.push("1.0.0")
    cd_world.docker_client.containers.run(
        foreign, name=cd_world.name, detach=True, ports={"8080/tcp": ("127.0.0.1", cd_world.port)},
        volumes={cd_world.volume: {"bind": "/data", "mode": "rw"}},
    )
    wait_for(lambda: cd_world.served() == "0.9.0", timeout=10, what="the foreign container serving")
    deployer = cd_world.deployer()

    report = deployer.deploy("1.0.0")

    assert report.outcome == "deployed", report
    assert report.previous == "0.9.0"
    assert cd_world.served() == "1.0.0"
    assert cd_world.read_in_app("/data/history").split() == ["0.9.0", "1.0.0"]
    previous = deployer.state.previous
    assert previous is not None and previous.version == "0.9.0"


def test_a_failed_first_deploy_restores_the_adopted_container(cd_world: CdWorld) -> None:
    foreign = cd_world.releases.push("0.9.0", keep_local=True)
    cd_world.releases.push("1.0.0", "broken")
    cd_world.docker_client.containers.run(
        foreign, name=cd_world.name, detach=True, ports={"8080/tcp": ("127.0.0.1", cd_world.port)}
    )
    wait_for(lambda: cd_world.served() == "0.9.0", timeout=10, what="the foreign container serving")
    deployer = cd_world.deployer()

    report = deployer.deploy("1.0.0")

    assert report.outcome == "rolled_back", report
    assert cd_world.served() == "0.9.0"
    container = cd_world.docker_client.containers.get(cd_world.name)
    assert LABEL_MANAGED not in container.labels
    assert cd_world.containers() == [cd_world.name]


def _cache_volume(world: CdWorld) -> str:
    mounts = world.docker_client.containers.get(world.name).attrs["Mounts"]
    return str(next(m["Name"] for m in mounts if m["Destination"] == "/cache"))


def test_the_app_is_reachable_only_on_loopback(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0")
    cd_world.deployer().deploy("1.0.0")
    bindings = cd_world.docker_client.containers.get(cd_world.name).attrs["HostConfig"]["PortBindings"]
    assert bindings == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(cd_world.port)}]}
    assert httpx.get(cd_world.url, timeout=2).text == "1.0.0"
