"""``ci-agent serve`` as a real process: signed GitHub deliveries → runs → images in a real registry.

Everything here is real: uvicorn on a loopback port, git repositories, dockerd, the registry and an
SMTP server. Runs that must stay "in progress" wait for a gate file the test creates, so nothing
depends on timing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shared.registry import RegistryClient, parse_image_ref
from tests.support.agent_process import AgentProcess
from tests.support.ci_agent_server import (
    SMTP_PASSWORD,
    WEBHOOK_SECRET,
    StartAgent,
    gated_test_script,
    push_payload,
    registry_tags,
)
from tests.support.docker_env import DockerJanitor
from tests.support.git_repos import GitProject
from tests.support.payloads import GITHUB_PAYLOADS as PAYLOADS
from tests.support.smtp_server import SmtpServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]



def test_signed_pushes_release_the_next_versions_with_oci_labels(
    start_ci_agent: StartAgent, git_project: GitProject, ci_image_name: str
) -> None:
    agent = start_ci_agent(CI_TEST_RUNNER="docker")
    first = git_project.commit_sample("initial sample app")
    answer = agent.deliver(push_payload(git_project, first, "initial sample app"))
    assert answer.status_code == 202, answer.text
    run = agent.wait_finished(answer.json()["run"])
    assert (run["status"], run["version"], run["failed_step"]) == ("succeeded", "0.1.0", None), run
    assert registry_tags(ci_image_name) == ["0.1.0", "latest"]
    with RegistryClient(parse_image_ref(ci_image_name)) as client:
        labels = client.image_labels("0.1.0")
        assert labels["org.opencontainers.image.revision"] == first
        assert labels["org.opencontainers.image.version"] == "0.1.0"
        assert labels["org.opencontainers.image.source"] == git_project.url
        assert labels["org.opencontainers.image.created"]
        assert client.manifest_digest("latest") == client.manifest_digest("0.1.0")

    fix = git_project.commit({"www/index.html": "<p>hello again</p>\n"}, "fix: greet again")
    git_project.push()
    run = agent.wait_finished(agent.deliver(push_payload(git_project, fix, "fix: greet again")).json()["run"])
    assert (run["status"], run["version"]) == ("succeeded", "0.1.1"), run

    feature = git_project.commit({"www/new.html": "new\n"}, "feat: a new page")
    git_project.push()
    run = agent.wait_finished(agent.deliver(push_payload(git_project, feature, "feat: a new page")).json()["run"])
    assert (run["status"], run["version"]) == ("succeeded", "0.2.0"), run
    assert registry_tags(ci_image_name) == ["0.1.0", "0.1.1", "0.2.0", "latest"]

    log = httpx.get(f"{agent.dashboard_url}/runs/{run['number']}/log").text
    for step in ("checkout", "test", "build", "push"):
        assert step in log
    assert Path(run["log_path"]).name.endswith(f"_run-{run['number']:04d}.log")


def test_a_failing_test_pushes_nothing_and_emails_the_step_with_the_log_tail(
    start_ci_agent: StartAgent, git_project: GitProject, ci_image_name: str, smtp_server: SmtpServer
) -> None:
    agent = start_ci_agent(
        CI_TEST_RUNNER="docker",
        SMTP_HOST=smtp_server.host,
        SMTP_PORT=str(smtp_server.port),
        SMTP_SECURITY="none",
        NOTIFY_FROM="ci@example.invalid",
        NOTIFY_TO="dev@example.invalid,ops@example.invalid",
    )
    failing = "#!/bin/sh\necho 'assertion failed: expected a greeting'\nexit 3\n"
    sha = git_project.commit_sample("broken tests", test_script=failing)
    run = agent.wait_finished(agent.deliver(push_payload(git_project, sha, "broken tests")).json()["run"])

    assert (run["status"], run["failed_step"], run["version"]) == ("failed", "test", None), run
    assert registry_tags(ci_image_name) == []
    [mail] = smtp_server.wait_for_messages(1, timeout=30)
    body = mail.get_content()
    assert "test" in mail["Subject"]
    assert "assertion failed: expected a greeting" in body
    assert SMTP_PASSWORD not in body and WEBHOOK_SECRET not in body
    assert sorted(smtp_server.received[0].recipients) == ["dev@example.invalid", "ops@example.invalid"]


def test_pushes_during_a_run_coalesce_to_the_newest_and_duplicates_run_once(
    start_ci_agent: StartAgent, git_project: GitProject, ci_image_name: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    agent = start_ci_agent(CI_TEST_RUNNER="host", CI_TEST_COMMAND="sh tests/run.sh")
    first = git_project.commit_sample("first", test_script=gated_test_script(gate))
    delivery = str(uuid.uuid4())
    running = agent.deliver(push_payload(git_project, first, "first"), delivery=delivery).json()["run"]
    again = agent.deliver(push_payload(git_project, first, "first"), delivery=delivery)
    assert again.status_code == 200 and again.json() == {"duplicate": True, "run": running}
    # Inside its tests, past the replay checks: from here on, newer queued pushes cannot supersede it.
    agent.process.wait_until(lambda: "step test started" in agent.log_of(running), what="the first run's tests")

    queued = []
    for index in range(5):
        sha = git_project.commit({"tests/run.sh": "#!/bin/sh\necho ok\n", "n.txt": str(index)}, f"fix: push {index}")
        git_project.push()
        answer = agent.deliver(push_payload(git_project, sha, f"fix: push {index}"))
        assert answer.status_code == 202, answer.text
        queued.append(answer.json()["run"])
    assert agent.run(running)["status"] == "running"

    gate.touch()
    assert agent.wait_finished(running)["status"] == "succeeded"
    newest = agent.wait_finished(queued[-1])
    assert newest["status"] == "succeeded", newest
    assert [agent.run(number)["status"] for number in queued[:-1]] == ["superseded"] * 4
    runs = httpx.get(f"{agent.dashboard_url}/runs").json()
    assert len(runs) == 6
    versions = [run["version"] for run in runs if run["version"]]
    assert sorted(versions) == ["0.1.0", "0.1.1"]
    assert registry_tags(ci_image_name) == ["0.1.0", "0.1.1", "latest"]


def test_a_run_killed_with_the_agent_is_interrupted_and_the_next_one_runs(
    start_ci_agent: StartAgent, git_project: GitProject, ci_image_name: str, tmp_path: Path
) -> None:
    gate = tmp_path / "never-opened"
    agent = start_ci_agent(CI_TEST_RUNNER="host", CI_TEST_COMMAND="sh tests/run.sh")
    sha = git_project.commit_sample("hangs", test_script=gated_test_script(gate))
    stuck = agent.deliver(push_payload(git_project, sha, "hangs")).json()["run"]
    agent.wait_status(stuck, "running")
    agent.process.kill()

    agent = start_ci_agent(CI_TEST_RUNNER="host", CI_TEST_COMMAND="sh tests/run.sh")
    run = agent.run(stuck)
    assert run["status"] == "interrupted" and run["finished_at"], run

    fixed = git_project.commit({"tests/run.sh": "#!/bin/sh\necho ok\n"}, "fix: tests pass")
    git_project.push()
    following = agent.deliver(push_payload(git_project, fixed, "fix: tests pass")).json()["run"]
    assert following > stuck
    run = agent.wait_finished(following)
    assert (run["status"], run["version"]) == ("succeeded", "0.1.0"), run


def test_bad_deliveries_to_the_real_server_queue_nothing(start_ci_agent: StartAgent, git_project: GitProject) -> None:
    agent = start_ci_agent()
    sha = git_project.commit_sample()
    good = push_payload(git_project, sha, "x")
    assert agent.deliver(good, signed=False).status_code == 401
    assert agent.deliver(b"not json at all").status_code == 400
    assert agent.deliver(b"x" * (26 * 1024 * 1024)).status_code == 413
    crafted = push_payload(git_project, sha, "x", ref="refs/heads/--upload-pack=touch x")
    assert agent.deliver(crafted).status_code == 400
    deletion = json.loads((PAYLOADS / "push_payload.json").read_text())
    answer = agent.deliver(deletion)
    assert answer.status_code in (200, 202) and "ignored" in answer.json()
    assert agent.deliver(json.loads((PAYLOADS / "ping_payload.json").read_text()), event="ping").status_code == 200
    assert httpx.get(f"{agent.dashboard_url}/runs").json() == []


def run_command(tmp_path: Path, env: dict[str, str], *args: str) -> AgentProcess:
    process = AgentProcess("ci_agent", ["run", *args], env, tmp_path).start()
    process.wait_exit(timeout=120)
    return process


@pytest.fixture
def run_env(
    tmp_path: Path,
    git_project: GitProject,
    ci_image_name: str,
    docker_janitor: DockerJanitor,
    secret: Callable[[str], str],
) -> Iterator[dict[str, str]]:
    yield {
        "CI_REPO_URL": git_project.url,
        "CI_WEBHOOK_SECRET": secret(WEBHOOK_SECRET),
        "CI_IMAGE": ci_image_name,
        "CI_TEST_COMMAND": "sh /tests/run.sh",
        "LOG_DIR": str(tmp_path / "logs"),
        "STATE_DIR": str(tmp_path / "state"),
    }
    docker_janitor.images.add(f"{ci_image_name}:1.4.0")


def test_run_command_releases_the_branch_head_and_a_version_tag(
    tmp_path: Path, run_env: dict[str, str], git_project: GitProject, ci_image_name: str
) -> None:
    git_project.commit_sample("initial")
    done = run_command(tmp_path, run_env)
    assert done.process is not None and done.process.returncode == 0, done.output
    assert registry_tags(ci_image_name) == ["0.1.0", "latest"]

    git_project.commit({"www/index.html": "<p>hello 1.4</p>\n"}, "release")
    git_project.push()
    git_project.tag("v1.4.0")
    done = run_command(tmp_path, run_env, "--ref", "v1.4.0")
    assert done.process is not None and done.process.returncode == 0, done.output
    assert registry_tags(ci_image_name) == ["0.1.0", "1.4.0", "latest"]

    # Released already from this very commit: nothing to do, and nothing overwritten.
    again = run_command(tmp_path, run_env, "--ref", "v1.4.0")
    assert again.process is not None and again.process.returncode == 0, again.output
    assert "released nothing" in again.output and "already released as 1.4.0" in again.output
    assert registry_tags(ci_image_name) == ["0.1.0", "1.4.0", "latest"]


def test_run_command_refuses_a_ref_crafted_as_a_git_option(
    tmp_path: Path, run_env: dict[str, str], git_project: GitProject
) -> None:
    git_project.commit_sample("initial")
    marker = tmp_path / "pwned"
    done = run_command(tmp_path, run_env, "--ref", f"--upload-pack=touch {marker}")
    assert done.process is not None and done.process.returncode != 0
    assert "--upload-pack" in done.output or "ref" in done.output
    assert not marker.exists()
    assert not (tmp_path / "state" / "work" / "checkout").exists() or not any(
        (tmp_path / "state" / "work" / "checkout").iterdir()
    )


def test_run_command_with_a_bad_setting_names_it_and_exits_2(tmp_path: Path) -> None:
    done = run_command(
        tmp_path, {"CI_REPO_URL": "x", "CI_IMAGE": "Bad Image", "CI_WEBHOOK_SECRET": WEBHOOK_SECRET, "CI_PORT": "99999"}
    )
    assert done.process is not None and done.process.returncode == 2
    assert "CI_IMAGE" in done.output and "CI_PORT" in done.output
    assert WEBHOOK_SECRET not in done.output
