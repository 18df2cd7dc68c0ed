"""Releases that do not come up healthy: the old version serves again, the owner is told, the version
is quarantined, and a later good release still gets deployed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cd_agent.errors import NothingToDeploy
from tests.support.cd_apps import CdWorld
from tests.support.smtp_server import SmtpServer

pytestmark = pytest.mark.docker


def test_a_release_whose_process_exits_is_rolled_back_quarantined_and_reported(
    cd_world: CdWorld, smtp_server: SmtpServer
) -> None:
    cd_world.use_smtp(smtp_server.host, smtp_server.port)
    cd_world.releases.push("1.0.0")
    cd_world.releases.push("1.0.1", "broken")
    cd_world.releases.push("1.0.2")
    deployer = cd_world.deployer()
    deployer.deploy("1.0.0")

    report = deployer.deploy("1.0.1")

    assert report.outcome == "rolled_back", report
    assert report.previous == "1.0.0"
    assert cd_world.served() == "1.0.0"
    assert cd_world.containers() == [cd_world.name]
    assert report.log_tail is not None and "cannot open /etc/app.conf" in report.log_tail
    # the process exits with 3; once restarted the engine shows ExitCode 0, which must not be reported
    assert report.error is not None and ("code 3" in report.error or "restarted it" in report.error), report.error
    assert "code 0" not in report.error
    assert deployer.state.is_quarantined("1.0.1")
    current = deployer.state.current
    assert current is not None and current.version == "1.0.0"
    run = deployer.runs.get(report.run or 0)
    assert run is not None and run.status == "failed" and run.failed_step == "health"
    deployer.notifier.flush(10)
    messages = smtp_server.wait_for_messages(2, timeout=10)
    failure = messages[-1]
    assert failure["Subject"] == f"[{cd_world.name}] deploy of 1.0.1 failed: rolled back to 1.0.0"
    body = failure.get_content()
    assert "cannot open /etc/app.conf" in body and "quarantined" in body

    with pytest.raises(NothingToDeploy, match="quarantined"):
        deployer.deploy("1.0.1")
    assert deployer.deploy("1.0.2").outcome == "deployed"
    assert cd_world.served() == "1.0.2"
    assert cd_world.read_in_app("/data/history").split() == ["1.0.0", "1.0.0", "1.0.2"]


def test_a_release_whose_health_url_never_answers_is_rolled_back(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0")
    cd_world.releases.push("1.1.0", "silent")
    deployer = cd_world.deployer(CD_HEALTH_URL=cd_world.url, CD_HEALTH_TIMEOUT="3")
    deployer.deploy("1.0.0")

    report = deployer.deploy("1.1.0")

    assert report.outcome == "rolled_back", report
    assert report.error is not None and "did not answer 2xx within 3s" in report.error
    assert report.log_tail is not None and "waiting for a database" in report.log_tail
    assert cd_world.served() == "1.0.0"
    assert cd_world.read_in_app("/cache/history").split() == ["1.0.0", "1.0.0"]
    assert deployer.state.is_quarantined("1.1.0")
    deployer.notifier.flush(10)
    assert cd_world.mailer.sent[-1].subject == f"[{cd_world.name}] deploy of 1.1.0 failed: rolled back to 1.0.0"
    assert "waiting for a database" in cd_world.mailer.sent[-1].body


def test_the_image_healthcheck_decides_when_there_is_one(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0", "healthcheck")
    deployer = cd_world.deployer(CD_HEALTH_GRACE="0")

    report = deployer.deploy("1.0.0")

    assert report.outcome == "deployed", report
    state = cd_world.docker_client.containers.get(cd_world.name).attrs["State"]
    assert state["Health"]["Status"] == "healthy"
    run = deployer.runs.get(report.run or 0)
    assert run is not None and run.log_path is not None
    assert "HEALTHCHECK says healthy" in Path(run.log_path).read_text()


def test_an_unhealthy_image_healthcheck_rolls_back_with_its_output(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0")
    # the healthcheck asks port 8080, but this release listens on 9090
    start = "#!/bin/sh\ntrap 'exit 0' TERM\nhttpd -f -p 9090 -h / &\nwait\n"
    cd_world.releases.push("1.1.0", "healthcheck", start=start)
    deployer = cd_world.deployer()
    deployer.deploy("1.0.0")

    report = deployer.deploy("1.1.0")

    assert report.outcome == "rolled_back", report
    assert report.error is not None and "HEALTHCHECK" in report.error
    assert cd_world.served() == "1.0.0"
    deployer.notifier.flush(10)
    assert "Health check output" in cd_world.mailer.sent[-1].body


def test_a_version_missing_from_the_registry_fails_without_touching_the_app(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0")
    deployer = cd_world.deployer()
    deployer.deploy("1.0.0")

    report = deployer.deploy("9.9.9")

    assert report.outcome == "failed", report
    assert report.error is not None and "9.9.9" in report.error
    assert cd_world.served() == "1.0.0"
    assert not deployer.state.is_quarantined("9.9.9")
    run = deployer.runs.get(report.run or 0)
    assert run is not None and run.failed_step == "pull"
