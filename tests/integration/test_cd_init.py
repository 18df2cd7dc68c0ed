"""CD_INIT against the real Docker Engine: an app whose PID 1 has no SIGTERM handler.

``busybox httpd`` installs no SIGTERM handler. As a container's PID 1 the kernel therefore drops the
SIGTERM of ``docker stop`` and the engine kills it after ``CD_STOP_TIMEOUT``; under Docker's init
(``--init``, tini) it is not PID 1, SIGTERM's default action applies and it exits at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cd_agent.deployer import Deployer
from cd_agent.report import DeployReport
from tests.support.cd_apps import CdWorld

pytestmark = pytest.mark.docker

# No trap: the point is an app that does not handle SIGTERM itself.
NO_TERM_HANDLER = """#!/bin/sh
printf '%s' "$APP_VERSION" > /www/index.html
exec httpd -f -p 8080 -h /www
"""


def _upgrade(world: CdWorld, **settings: str) -> tuple[Deployer, str]:
    for version in ("1.0.0", "1.0.1"):
        world.releases.push(version, start=NO_TERM_HANDLER)
    deployer = world.deployer(CD_STOP_TIMEOUT="3", **settings)
    assert deployer.deploy("1.0.0").outcome == "deployed"
    report = deployer.deploy("1.0.1")
    assert report.outcome == "deployed", report
    assert world.served() == "1.0.1"
    return deployer, _run_log(deployer, report)


def _run_log(deployer: Deployer, report: DeployReport) -> str:
    run = deployer.runs.get(report.run or 0)
    assert run is not None and run.log_path is not None
    return Path(run.log_path).read_text()


def test_with_cd_init_the_app_stops_on_sigterm_within_the_timeout(cd_world: CdWorld) -> None:
    _, log = _upgrade(cd_world, CD_INIT="true")

    assert "stopped the old container (1.0.0) in" in log and "within CD_STOP_TIMEOUT=3s" in log
    assert "was killed" not in log
    container = cd_world.docker_client.containers.get(cd_world.name)
    assert container.attrs["HostConfig"]["Init"] is True


def test_without_cd_init_the_log_says_the_stop_ran_into_the_timeout_and_the_app_was_killed(
    cd_world: CdWorld,
) -> None:
    _, log = _upgrade(cd_world)

    assert "the old container (1.0.0) ran into CD_STOP_TIMEOUT=3s and was killed (SIGKILL, exit code 137)" in log
    assert "set CD_INIT=true" in log
    assert "within CD_STOP_TIMEOUT" not in log
    container = cd_world.docker_client.containers.get(cd_world.name)
    assert not container.attrs["HostConfig"].get("Init")
