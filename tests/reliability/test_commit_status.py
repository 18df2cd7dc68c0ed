"""Commit statuses end to end: a real ``ci-agent serve`` (real git, registry and Docker build) reporting to
tests/support/github_api.py, a local server answering as GitHub's statuses API documents it.

GitHub is a display: whatever it answers, a run's outcome is the same, the token never reaches a log,
and a failure is logged once per streak.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ci_agent_server import (
    GITHUB_REPO,
    CiAgentProcess,
    StartAgent,
    gated_test_script,
    push_payload,
)
from tests.support.git_repos import GitProject
from tests.support.github_api import GitHubApi

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TOKEN = "github_pat_reliability-Qm7v-never-shown"
PASSING = "#!/bin/sh\necho host tests passed\n"
FAILING = "#!/bin/sh\necho one test failed\nexit 1\n"
HOST_RUNNER = {"CI_TEST_RUNNER": "host", "CI_TEST_COMMAND": "sh tests/run.sh"}
PUBLIC_URL = "http://pi.tailnet.example:8001"
NOT_SENT = "not sent:"
BACK_AGAIN = "GitHub takes commit statuses again"


@pytest.fixture
def github(secret: Callable[[str], str]) -> Iterator[GitHubApi]:
    server = GitHubApi(GITHUB_REPO, secret(TOKEN)).start()
    yield server
    server.stop()


def start(start_ci_agent: StartAgent, github: GitHubApi, token: str = TOKEN) -> CiAgentProcess:
    return start_ci_agent(**HOST_RUNNER, CI_GITHUB_TOKEN=token, CI_GITHUB_API_URL=github.url,
                          CI_PUBLIC_URL=PUBLIC_URL)


def deliver(agent: CiAgentProcess, project: GitProject, sha: str, message: str) -> int:
    answer = agent.deliver(push_payload(project, sha, message))
    assert answer.status_code == 202, answer.text
    number: int = answer.json()["run"]
    return number


def settled(agent: CiAgentProcess, github: GitHubApi, sha: str, state: str, timeout: float = 60) -> None:
    agent.process.wait_until(
        lambda: bool(github.states(sha)) and github.states(sha)[-1][0] == state, timeout=timeout,
        what=f"{sha[:12]} {state} on GitHub",
    )


def statuses(github: GitHubApi, sha: str) -> list[dict[str, Any]]:
    return [r.body for r in github.created() if r.sha == sha and r.body is not None]


def test_runs_report_pending_then_their_outcome(
    start_ci_agent: StartAgent, git_project: GitProject, github: GitHubApi
) -> None:
    agent = start(start_ci_agent, github)
    good = git_project.commit_sample("first", test_script=PASSING)
    passed = agent.wait_finished(deliver(agent, git_project, good, "fix: good"))
    settled(agent, github, good, "success")
    bad = git_project.commit({"tests/run.sh": FAILING}, "fix: breaks the tests")
    git_project.push()
    failed = agent.wait_finished(deliver(agent, git_project, bad, "fix: breaks the tests"))
    settled(agent, github, bad, "failure")

    assert (passed["status"], passed["version"]) == ("succeeded", "0.1.0"), passed
    assert (failed["status"], failed["failed_step"]) == ("failed", "test"), failed
    n, m = passed["number"], failed["number"]
    assert statuses(github, good) == [
        {"state": "pending", "description": f"Run {n} queued", "context": "pi-cicd",
         "target_url": f"{PUBLIC_URL}/runs/{n}"},
        {"state": "success", "description": f"Run {n} released 0.1.0", "context": "pi-cicd",
         "target_url": f"{PUBLIC_URL}/runs/{n}"},
    ]
    assert [s["state"] for s in statuses(github, bad)] == ["pending", "failure"]
    assert statuses(github, bad)[-1]["description"].startswith(f"Run {m} failed at step test: ")
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in github.requests)
    assert all(r.answered == 201 for r in github.requests)
    assert TOKEN not in agent.process.output


def test_a_superseded_run_says_so_without_a_red_cross(
    start_ci_agent: StartAgent, git_project: GitProject, github: GitHubApi, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    agent = start(start_ci_agent, github)
    first = git_project.commit_sample("first", test_script=gated_test_script(gate))
    running = deliver(agent, git_project, first, "fix: a")
    agent.process.wait_until(lambda: "step test started" in agent.log_of(running), what="run A in its tests")
    middle = git_project.commit({"www/b.html": "b\n"}, "fix: b")
    git_project.push()
    middle_run = deliver(agent, git_project, middle, "fix: b")
    newest = git_project.commit({"www/c.html": "c\n"}, "fix: c")
    git_project.push()
    newest_run = deliver(agent, git_project, newest, "fix: c")
    gate.touch()
    agent.wait_all_finished(3)
    settled(agent, github, newest, "success")
    settled(agent, github, middle, "success")

    assert agent.run(middle_run)["status"] == "superseded"
    assert [s["state"] for s in statuses(github, middle)] == ["pending", "success"]
    assert statuses(github, middle)[-1]["description"] == (
        f"Run {middle_run} built nothing: superseded by run {newest_run}"
    )
    assert statuses(github, newest)[-1]["description"] == f"Run {newest_run} released 0.1.1"


def test_a_replayed_release_shows_it_was_already_released(
    start_ci_agent: StartAgent, git_project: GitProject, github: GitHubApi, tmp_path: Path
) -> None:
    agent = start(start_ci_agent, github)
    sha = git_project.commit_sample("first", test_script=PASSING)
    first = agent.wait_finished(deliver(agent, git_project, sha, "fix: a"))
    assert first["version"] == "0.1.0", first
    agent.process.stop()
    shutil.rmtree(tmp_path / "state")  # the run history lost: only the registry knows the release
    agent = start(start_ci_agent, github)
    replayed = agent.wait_finished(deliver(agent, git_project, sha, "fix: a"))
    agent.process.wait_until(
        lambda: len(statuses(github, sha)) == 4 and statuses(github, sha)[-1]["state"] == "success",
        what="the replay's outcome on GitHub",
    )
    assert replayed["status"] == "superseded", replayed
    assert [s["state"] for s in statuses(github, sha)] == ["pending", "success", "pending", "success"]
    assert statuses(github, sha)[-1]["description"] == (
        f"Run {replayed['number']} built nothing: already released as 0.1.0"
    )


@pytest.mark.reliability(
    "GitHub's statuses API answers 500 to the first 3 posts, then refuses connections until the run has "
    "finished, then comes back",
    "the run succeeds as without GitHub; one warning when the failures start and one line when GitHub is "
    "back, not one per attempt; the commit ends `success` on GitHub with the version; the token is in no log",
)
def test_github_down_changes_nothing_and_catches_up(
    start_ci_agent: StartAgent, git_project: GitProject, github: GitHubApi, observed: Callable[[str], None]
) -> None:
    github.fail_next(3, "500")
    agent = start(start_ci_agent, github)
    sha = git_project.commit_sample("first", test_script=PASSING)
    number = deliver(agent, git_project, sha, "fix: a")
    agent.process.wait_until(lambda: len(github.requests) >= 3, timeout=60, what="3 answers of 500")
    github.stop()
    run = agent.wait_finished(number)
    github.start()
    settled(agent, github, sha, "success", timeout=150)
    output = agent.process.output
    answered = [r.answered for r in github.requests]
    observed(f"run {run['status']} {run['version']}; GitHub answered {answered}; "
             f"{output.count(NOT_SENT)} failure line(s), {output.count(BACK_AGAIN)} recovery line(s)")
    assert (run["status"], run["version"]) == ("succeeded", "0.1.0"), run
    assert answered[:3] == [500, 500, 500] and answered[-1] == 201
    assert statuses(github, sha)[-1]["description"] == f"Run {number} released 0.1.0"
    assert output.count(NOT_SENT) == 1 and output.count(BACK_AGAIN) == 1, output
    assert TOKEN not in output and TOKEN not in agent.log_of(number)


@pytest.mark.reliability(
    "CI_GITHUB_TOKEN is refused by GitHub (401 Bad credentials) for every status",
    "the run succeeds as without GitHub; each status is tried once, never retried (2 requests for a run); "
    "one warning saying the token is refused, without the token",
)
def test_a_refused_token_changes_nothing(
    start_ci_agent: StartAgent, git_project: GitProject, github: GitHubApi,
    secret: Callable[[str], str], observed: Callable[[str], None],
) -> None:
    wrong = secret("github_pat_revoked-Lp3c-never-shown")
    agent = start(start_ci_agent, github, token=wrong)
    sha = git_project.commit_sample("first", test_script=PASSING)
    run = agent.wait_finished(deliver(agent, git_project, sha, "fix: a"))
    agent.process.wait_until(lambda: len(github.requests) >= 2, what="both statuses tried")
    agent.process.stop()  # flushes the sender: nothing more can arrive
    output = agent.process.output
    answered = [r.answered for r in github.requests]
    observed(f"run {run['status']} {run['version']}; GitHub answered {answered}; "
             f"{output.count(NOT_SENT)} warning(s)")
    assert (run["status"], run["version"]) == ("succeeded", "0.1.0"), run
    assert answered == [401, 401]
    assert output.count(NOT_SENT) == 1 and "CI_GITHUB_TOKEN is refused" in output, output
    assert wrong not in output


@pytest.mark.reliability(
    "GitHub answers the first status with 403, x-ratelimit-remaining: 0 and a reset 2 s ahead",
    "the status waits for the reset and is sent once more (no hammering: 403 then 201); the run is unchanged",
)
def test_rate_limit_is_waited_out(
    start_ci_agent: StartAgent, git_project: GitProject, github: GitHubApi, observed: Callable[[str], None]
) -> None:
    github.fail_next(1, "ratelimit")
    agent = start(start_ci_agent, github)
    sha = git_project.commit_sample("first", test_script=PASSING)
    run = agent.wait_finished(deliver(agent, git_project, sha, "fix: a"))
    settled(agent, github, sha, "success")
    answered = [r.answered for r in github.requests]
    observed(f"run {run['status']} {run['version']}; GitHub answered {answered}")
    assert (run["status"], run["version"]) == ("succeeded", "0.1.0"), run
    assert answered[0] == 403 and answered.count(403) == 1 and answered[-1] == 201
    assert [s["state"] for s in statuses(github, sha)][-1] == "success"


@pytest.mark.reliability(
    "CI_GITHUB_TOKEN is set but CI_GITHUB_REPO is not",
    "ci-agent refuses to start, naming both variables, without echoing the token",
)
def test_a_token_without_a_repository_is_refused_at_start(
    tmp_path: Path, secret: Callable[[str], str], observed: Callable[[str], None]
) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CI_REPO_URL": "https://example.org/app.git",
           "CI_IMAGE": "127.0.0.1:5000/x/app", "CI_ALLOW_UNSIGNED": "true", "CI_GITHUB_TOKEN": secret(TOKEN)}
    done = subprocess.run([sys.executable, "-m", "ci_agent", "serve"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    said = done.stdout + done.stderr
    observed(f"exit {done.returncode}: {said.strip()[-200:]}")
    assert done.returncode != 0
    assert "CI_GITHUB_TOKEN" in said and "CI_GITHUB_REPO" in said
    assert TOKEN not in said
