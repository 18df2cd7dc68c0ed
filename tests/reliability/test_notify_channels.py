"""Notification channels (NOTIFY_URLS, through Apprise) with real agents: what arrives, and channels that fail.

Every channel posts to a local HTTP server (tests/support/notify_server.py) and email goes to a real
aiosmtpd server, so the assertions are about what crossed the wire and what the agent logged.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.cd_apps import CdWorld, cd_agent
from tests.support.ci_agent_server import SMTP_PASSWORD, StartAgent, push_payload
from tests.support.git_repos import GitProject
from tests.support.notify_server import StartNotifyServer
from tests.support.ports import free_port
from tests.support.smtp_server import SmtpServer, StartSmtpServer

Observed = Callable[[str], None]
HOST_RUNNER = {"CI_TEST_RUNNER": "host", "CI_TEST_COMMAND": "sh tests/run.sh"}
FAILING_TEST = "#!/bin/sh\necho assertion-failed-in-test-app\nexit 1\n"


def mail_env(smtp: SmtpServer) -> dict[str, str]:
    return {
        "SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port), "SMTP_SECURITY": "none",
        "NOTIFY_FROM": "ci@example.invalid", "NOTIFY_TO": "dev@example.invalid",
    }


def final_failures(output: str, label: str) -> list[str]:
    return [line for line in output.splitlines() if label in line and "not sent" in line]


@pytest.mark.reliability(
    "a CI run fails at test with email and a json:// channel (token in its path) configured",
    "one notification with the title, the step and the log tail; the email arrives too; the token is in no log",
)
def test_a_failed_ci_run_notifies_every_channel(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    start_smtp_server: StartSmtpServer,
    start_notify_server: StartNotifyServer,
    secret: Callable[[str], str],
    observed: Observed,
) -> None:
    smtp, server = start_smtp_server(), start_notify_server()
    token = secret("hookToken-ci-4f9a2b7c")
    agent = start_ci_agent(**HOST_RUNNER, **mail_env(smtp), NOTIFY_URLS=f"json://127.0.0.1:{server.port}/h/{token}")
    sha = git_project.commit_sample("fails", test_script=FAILING_TEST)
    run = agent.wait_finished(agent.deliver(push_payload(git_project, sha, "fails")).json()["run"])
    [request] = server.wait_for_requests(1)
    [mail] = smtp.wait_for_messages(1)
    payload = request.json()
    observed(f"run {run['status']} at {run['failed_step']}; posted {payload['title']!r} ({payload['type']}); "
             f"email {mail['Subject']!r}")
    assert (run["status"], run["failed_step"]) == ("failed", "test"), run
    assert payload["title"] == " ".join(str(mail["Subject"]).split())  # the header may be folded
    assert payload["title"].startswith(f"CI run #{run['number']} failed at test")
    assert payload["type"] == "failure"
    assert "assertion-failed-in-test-app" in payload["message"]  # the log tail
    assert SMTP_PASSWORD not in request.text
    output = agent.process.output
    assert "notifications on: NOTIFY_URLS #1 (json://127.0.0.1)" in output
    assert token not in output
    assert final_failures(output, "NOTIFY_URLS") == []


@pytest.mark.reliability(
    "a CI run fails while one channel refuses connections and another answers 500 to everything",
    "the run's outcome is unchanged (failed at test), each channel's failure is logged once, the email arrives",
)
def test_channels_that_are_down_change_nothing(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    start_smtp_server: StartSmtpServer,
    start_notify_server: StartNotifyServer,
    observed: Observed,
) -> None:
    smtp, failing = start_smtp_server(), start_notify_server(status=500)
    refused = f"json://127.0.0.1:{free_port()}/hook"
    agent = start_ci_agent(
        **HOST_RUNNER, **mail_env(smtp), NOTIFY_URLS=f"{refused}, form://127.0.0.1:{failing.port}/hook"
    )
    sha = git_project.commit_sample("fails", test_script=FAILING_TEST)
    run = agent.wait_finished(agent.deliver(push_payload(git_project, sha, "fails")).json()["run"])
    [mail] = smtp.wait_for_messages(1)
    agent.process.wait_until(
        lambda: len(final_failures(agent.process.output, "NOTIFY_URLS")) >= 2, timeout=60, what="both failures"
    )
    output = agent.process.output
    first, second = final_failures(output, "NOTIFY_URLS #1"), final_failures(output, "NOTIFY_URLS #2")
    observed(f"run {run['status']} at {run['failed_step']}; email {mail['Subject']!r}; "
             f"{len(failing.requests)} attempts at the 500 server; logged: {first[0].split('|')[-1].strip()[:120]} / "
             f"{second[0].split('|')[-1].strip()[:120]}")
    assert (run["status"], run["failed_step"]) == ("failed", "test"), run
    assert len(first) == 1 and "not sent after 3 attempts" in first[0] and "ERROR" in first[0]
    assert len(second) == 1 and "500" in second[0]
    assert len(failing.requests) == 3
    assert agent.run(run["number"])["status"] == "failed"


@pytest.mark.docker
@pytest.mark.reliability(
    "cd-agent deploy with a working ntfy-shaped channel and a channel answering 500",
    "the deploy succeeds (exit 0, new version served); ntfy gets 'deployed X'; the failing channel is logged once",
)
def test_a_deploy_is_announced_and_a_failing_channel_does_not_fail_it(
    cd_world: CdWorld, start_notify_server: StartNotifyServer, observed: Observed
) -> None:
    ntfy, failing = start_notify_server(answer={"id": "x"}), start_notify_server(status=500)
    cd_world.releases.push("1.0.0")
    environ = cd_world.environ(
        NOTIFY_URLS=f"ntfy://127.0.0.1:{ntfy.port}/pi-deploys gotify://127.0.0.1:{failing.port}/AppTokenValue99"
    )
    result = cd_agent("deploy", "1.0.0", environ=environ, cwd=cd_world.root)
    [request] = ntfy.wait_for_requests(1)
    payload = request.json()
    failures = final_failures(result.stderr, "NOTIFY_URLS #2")
    observed(f"exit {result.returncode}, serving {cd_world.served()}; ntfy got {payload['title']!r}; "
             f"{len(failing.requests)} attempts at the 500 server, {len(failures)} log line")
    assert result.returncode == 0, result.stderr
    assert cd_world.served() == "1.0.0"
    # the app's name first: one agent may deploy many apps (its one app is named by CD_CONTAINER_NAME)
    assert (payload["topic"], payload["title"]) == ("pi-deploys", f"[{cd_world.name}] deployed 1.0.0")
    assert "is running as" in payload["message"]
    assert len(failing.requests) == 3
    assert len(failures) == 1
    assert "AppTokenValue99" not in result.stderr + result.stdout


@pytest.mark.reliability(
    "NOTIFY_URLS holds a URL Apprise does not understand (a Telegram URL with a malformed token)",
    "the agent refuses to start (exit 2) naming the URL's position and scheme, never its token",
)
def test_a_bad_url_stops_the_agent_at_start_up(tmp_path, observed: Observed) -> None:
    environ = {
        "CD_IMAGE": "127.0.0.1:5000/o/app", "CD_CONTAINER_NAME": "app", "STATE_DIR": str(tmp_path / "state"),
        "NOTIFY_URLS": "ntfys://ntfy.sh/fine-topic,tgram://bad-token-value-xyz/123",
    }
    result = cd_agent("watch", environ=environ, cwd=tmp_path, timeout=60)
    observed(f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1][:200]}")
    assert result.returncode == 2
    assert "NOTIFY_URLS #2 (tgram://…) is not a URL Apprise understands" in result.stderr
    assert "bad-token-value-xyz" not in result.stderr + result.stdout


@pytest.mark.docker
@pytest.mark.reliability(
    "cd-agent deploys a release whose container crashes at start, with a form:// channel configured",
    "the old version serves again; the channel gets 'deploy of X failed: rolled back to Y' with the crash log",
)
def test_a_rollback_is_announced_with_the_container_log(
    cd_world: CdWorld, start_notify_server: StartNotifyServer, observed: Observed
) -> None:
    server = start_notify_server()
    cd_world.releases.push("1.0.0")
    cd_world.releases.push("1.0.1", "broken")
    environ = cd_world.environ(NOTIFY_URLS=f"form://127.0.0.1:{server.port}/deploys")
    assert cd_agent("deploy", "1.0.0", environ=environ, cwd=cd_world.root).returncode == 0
    result = cd_agent("deploy", "1.0.1", environ=environ, cwd=cd_world.root)
    first, second = server.wait_for_requests(2)
    form = second.form()
    observed(f"exit {result.returncode}, serving {cd_world.served()}; posted {first.form()['title']!r}, then "
             f"{form['title']!r} ({form['type']})")
    assert cd_world.served() == "1.0.0"
    assert first.form()["title"] == f"[{cd_world.name}] deployed 1.0.0"
    assert form["title"] == f"[{cd_world.name}] deploy of 1.0.1 failed: rolled back to 1.0.0"
    assert form["type"] == "failure"
    assert "cannot open /etc/app.conf" in form["message"]
