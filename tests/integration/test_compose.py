"""CD_STRATEGY=compose end to end: a stack made by the real compose, deploys by a real ``cd-agent`` process."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support.cd_apps import cd_agent, status_json, version_of
from tests.support.compose_cli import both_compose_versions
from tests.support.compose_stack import DB_HEALTH_URL, Stack
from tests.support.polling import wait_for

pytestmark = pytest.mark.docker


@both_compose_versions
def test_a_release_is_pinned_and_deployed_and_a_broken_one_rolled_back_with_the_db_untouched(
    compose_stack: Stack, compose_cli: str,
) -> None:
    world = compose_stack.world
    for version in ("1.0.0", "1.1.0"):
        world.releases.push(version, "healthcheck", health_url=DB_HEALTH_URL)
    world.releases.push("1.2.0", "broken")
    compose_stack.write("1.0.0")
    compose_stack.up()
    wait_for(lambda: world.served() == "1.0.0", timeout=60, what="the stack's web serving 1.0.0")
    db_before = compose_stack.db_identity()

    deployed = cd_agent("deploy", "1.1.0", environ=world.environ(), cwd=world.root)
    assert deployed.returncode == 0, deployed.stderr
    assert "deployed 1.1.0 (was 1.0.0)" in deployed.stdout
    assert world.served() == "1.1.0"
    (web,) = compose_stack.containers("web")
    assert web["State"]["Health"]["Status"] == "healthy"  # its HEALTHCHECK reached http://db:8080/
    separator = "-" if compose_cli == "v2" else "_"  # which compose made it: v2 names it p-web-1, 1.29 p_web_1
    assert web["Name"] == f"/{compose_stack.project}{separator}web{separator}1", web["Name"]
    assert compose_stack.db_identity() == db_before
    listed = compose_stack.compose("ps", "-q", "web")  # compose still counts it as its own
    assert listed.returncode == 0 and listed.stdout.split() == [web["Id"]], listed
    pin = world.target().paths.state_dir / "compose-pin.yml"
    assert stat.S_IMODE(pin.stat().st_mode) == 0o600
    digest = world.releases.repository + ":1.1.0@sha256:"
    assert digest in pin.read_text()
    assert web["Config"]["Image"].startswith(digest)
    # The user's own `up` with the pin (the README's COMPOSE_FILE) changes nothing.
    again = compose_stack.compose("up", "-d", files=(pin,))
    assert again.returncode == 0, again.stderr
    assert [c["Id"] for c in compose_stack.containers("web")] == [web["Id"]]
    # The same release again is a no-op: the pin names it and the service runs it (nothing recreated)...
    same = cd_agent("deploy", "1.1.0", environ=world.environ(), cwd=world.root)
    assert same.returncode == 0 and "1.1.0 is already deployed and running" in same.stdout, same
    assert [(c["Id"], c["State"]["StartedAt"]) for c in compose_stack.containers("web")] == [
        (web["Id"], web["State"]["StartedAt"])]
    # ...but not once the user's own `up` without the pin put the file's 1.0.0 back: then it is deployed again.
    assert compose_stack.compose("up", "-d", "web").returncode == 0
    wait_for(lambda: world.served() == "1.0.0", timeout=60, what="the user's up serving the file's 1.0.0")
    redeployed = cd_agent("deploy", "1.1.0", environ=world.environ(), cwd=world.root)
    assert redeployed.returncode == 0 and "already" not in redeployed.stdout, redeployed
    assert world.served() == "1.1.0"
    (web,) = compose_stack.containers("web")

    broken = cd_agent("deploy", "1.2.0", environ=world.environ(), cwd=world.root)
    assert broken.returncode == 1, broken.stdout
    assert "deploy of 1.2.0 rolled back" in broken.stderr
    assert digest in pin.read_text() and ":1.2.0" not in pin.read_text()
    assert world.served() == "1.1.0"
    (back,) = compose_stack.containers("web")
    assert back["Config"]["Image"].startswith(digest)
    assert compose_stack.db_identity() == db_before
    status = status_json(world)
    assert version_of(status["current"]) == "1.1.0" and version_of(status["previous"]) == "1.0.0"
    assert [q["version"] for q in status["quarantined"]] == ["1.2.0"]
    assert status["deploy_in_progress"] is None
    (replica,) = status["service"]["tasks"]
    assert status["service"]["version"] == "1.1.0" and replica["version"] == "1.1.0", status["service"]
    assert replica["node"] == back["Name"].lstrip("/") and replica["state"] == "running (healthy)", replica
    assert "fatal: cannot open /etc/app.conf" in broken.stderr or any(
        "fatal: cannot open /etc/app.conf" in path.read_text() for path in (world.root / "logs").glob("*.log")
    )


def _spies(folder: Path) -> tuple[dict[str, str], Path]:
    """``docker`` and ``docker-compose`` first on PATH, each noting its arguments in ``calls`` and failing."""
    folder.mkdir()
    calls = folder / "calls"
    for name in ("docker", "docker-compose"):
        spy = folder / name
        spy.write_text(f'#!/bin/sh\necho "{name} $*" >>{calls}\nexit 1\n')
        spy.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}, calls


def test_status_never_runs_compose_and_a_deploy_checks_the_project_first(compose_stack: Stack) -> None:
    # `compose config` costs a second or more on a Pi: `status` (and the dashboard) must not pay it.
    world = compose_stack.world
    compose_stack.write("1.0.0")
    path, calls = _spies(world.root / "spies")

    status = cd_agent("status", "--json", environ=world.environ(**path), cwd=world.root)

    assert status.returncode == 0, status.stderr
    assert not calls.exists(), calls.read_text()
    # A command that deploys does check the project (the spies show they are on PATH): compose is refused here.
    deploy = cd_agent("deploy", "1.0.0", environ=world.environ(**path), cwd=world.root)
    assert deploy.returncode == 2, (deploy.stdout, deploy.stderr)
    assert "CD_COMPOSE_FILE" in deploy.stderr and "compose" in calls.read_text(), deploy.stderr
    assert compose_stack.containers("web") == [] and compose_stack.containers("db") == []
