"""Commit statuses end to end: a real ``ci-agent serve`` (real git, registry and Docker build) reporting to
tests/support/github_api.py, a local server answering as GitHub's statuses API documents it.

GitHub is a display: whatever it answers, a run's outcome is the same, the token never reaches a log,
and a failure is logged once per streak.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
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
from tests.support.hostile_http import HostileHttpServer
from tests.support.ports import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TOKEN = "github_pat_reliability-Qm7v-never-shown"
PASSING = "#!/bin/sh\necho host tests passed\n"
FAILING = "#!/bin/sh\necho one test failed\nexit 1\n"
HOST_RUNNER = {"CI_TEST_RUNNER": "host", "CI_TEST_COMMAND": "sh tests/run.sh"}
PUBLIC_URL = "http://pi.tailnet.example:8001"
NOT_SENT = "not sent:"
BACK_AGAIN = "GitHub takes commit statuses again"
GIVEN_UP = "given up: tried"
MAX_ATTEMPTS = 5  # ci_agent.commit_status.MAX_ATTEMPTS, as the README promises it
DEADLINE = 20  # seconds, ci_agent.commit_status.REQUEST_DEADLINE
BODY_LIMIT = 64 * 1024


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


def peak_memory_mib(agent: CiAgentProcess) -> float | None:
    """The agent process's peak resident memory (VmHWM), for the observed line only."""
    assert agent.process.process is not None
    try:
        status = Path(f"/proc/{agent.process.process.pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), None)


@pytest.mark.reliability(
    "CI_GITHUB_API_URL answers every status with 500 and a 400 MiB body, sent as fast as the agent reads it",
    "the run succeeds as without GitHub; each answer's body is read up to 64 KiB and the connection closed "
    "(the server gets to send well under 4 MiB of the 400 MiB per request); each status is tried at most 5 "
    "times and its giving up is one line saying why",
)
def test_a_huge_error_body_is_not_read(
    start_ci_agent: StartAgent, git_project: GitProject, secret: Callable[[str], str],
    observed: Callable[[str], None],
) -> None:
    secret(TOKEN)
    with HostileHttpServer.huge_body(400 * 2**20) as api:
        agent = start_ci_agent(**HOST_RUNNER, CI_GITHUB_TOKEN=TOKEN, CI_GITHUB_API_URL=api.url)
        sha = git_project.commit_sample("first", test_script=PASSING)
        run = agent.wait_finished(deliver(agent, git_project, sha, "fix: a"))
        agent.process.wait_until(lambda: len(api.closed()) >= 2, timeout=60, what="two answers ended")
        sent = [served.body_bytes_sent for served in api.closed()]
        peak = peak_memory_mib(agent)
        assert max(sent) < 4 * 2**20, f"bodies sent in full: {sent}"
        agent.process.wait_until(lambda: agent.process.output.count(GIVEN_UP) >= 1, timeout=120,
                                 what="a status given up")
        agent.process.stop()
    output = agent.process.output
    connections = api.connections()
    observed(f"run {run['status']} {run['version']}; {len(connections)} request(s), body bytes sent per request "
             f"{sorted({s.body_bytes_sent for s in connections})} of {400 * 2**20}; agent peak memory "
             f"{peak and round(peak)} MiB; {output.count(GIVEN_UP)} give-up line(s)")
    assert (run["status"], run["version"]) == ("succeeded", "0.1.0"), run
    assert all(served.cut_by_client for served in connections)
    assert max(served.body_bytes_sent for served in connections) < 4 * 2**20
    assert len(connections) <= 2 * MAX_ATTEMPTS
    assert "answered 500" in output and TOKEN not in output


@pytest.mark.reliability(
    "CI_GITHUB_API_URL answers 500 and then sends its body one byte every 2 s (never tripping a 10 s read "
    "timeout), for every status",
    "each request is cut 20 s after it started (connect, headers and body together), the agent closing the "
    "connection; the log says it did not answer within 20s; the run and the webhook listener are not held "
    "up; stopping the agent cuts the request in flight",
)
def test_a_trickled_answer_is_cut_at_the_deadline(
    start_ci_agent: StartAgent, git_project: GitProject, secret: Callable[[str], str],
    observed: Callable[[str], None],
) -> None:
    secret(TOKEN)
    with HostileHttpServer.trickle(every=2.0) as api:
        agent = start_ci_agent(**HOST_RUNNER, CI_GITHUB_TOKEN=TOKEN, CI_GITHUB_API_URL=api.url)
        sha = git_project.commit_sample("first", test_script=PASSING)
        run = agent.wait_finished(deliver(agent, git_project, sha, "fix: a"))
        webhook_during = httpx.get(f"{agent.url}/healthz", timeout=5).status_code
        agent.process.wait_until(lambda: len(api.closed()) >= 2, timeout=DEADLINE * 3, what="two requests cut")
        cut = api.closed()
        stopping = time.monotonic()
        agent.process.stop()
        stopped_in = time.monotonic() - stopping
        api.close()
    output = agent.process.output
    seconds = [round(served.seconds or 0, 1) for served in cut]
    observed(f"run {run['status']} {run['version']}; requests lasted {seconds} s "
             f"({[s.body_bytes_sent for s in cut]} body bytes); webhook listener answered {webhook_during} meanwhile; "
             f"agent stopped in {stopped_in:.1f} s")
    assert (run["status"], run["version"]) == ("succeeded", "0.1.0"), run
    assert webhook_during == 200
    assert all(served.cut_by_client for served in cut)
    assert all(DEADLINE - 1 <= (served.seconds or 0) <= DEADLINE + 5 for served in cut), seconds
    assert f"did not answer within {DEADLINE}s" in output
    assert stopped_in < 15  # not SIGKILLed by the harness: the request in flight was cut


@pytest.mark.reliability(
    "GitHub's statuses API answers 500 to every status, for ever",
    "the run succeeds as without GitHub; each status is tried at most 5 times (back-off 1, 2, 4, 8 s), then "
    "given up with one line naming the attempts and GitHub's answer; nothing is sent after that",
)
def test_a_server_error_for_ever_is_given_up(
    start_ci_agent: StartAgent, git_project: GitProject, github: GitHubApi, observed: Callable[[str], None]
) -> None:
    github.fail_next(10_000, "500")
    agent = start(start_ci_agent, github)
    sha = git_project.commit_sample("first", test_script=PASSING)
    run = agent.wait_finished(deliver(agent, git_project, sha, "fix: a"))

    def tried(state: str) -> int:
        return sum(1 for r in github.requests if r.body is not None and r.body["state"] == state)

    agent.process.wait_until(lambda: tried("success") >= MAX_ATTEMPTS and GIVEN_UP in agent.process.output
                             and tried("pending") in range(1, MAX_ATTEMPTS + 1), timeout=120,
                             what="the outcome tried 5 times and given up")
    lines = [line for line in agent.process.output.splitlines() if GIVEN_UP in line]
    agent.process.stop()
    pending, success = tried("pending"), tried("success")
    observed(f"run {run['status']} {run['version']}; GitHub got {pending} pending and {success} success "
             f"request(s), all answered 500; give-up line: {lines[-1][-150:]!r}")
    assert (run["status"], run["version"]) == ("succeeded", "0.1.0"), run
    assert success == MAX_ATTEMPTS and 1 <= pending <= MAX_ATTEMPTS
    assert all(r.answered == 500 for r in github.requests)
    assert len(lines) in (1, 2) and f"tried {MAX_ATTEMPTS} time(s)" in lines[-1] and "500" in lines[-1]


@pytest.mark.reliability(
    "CI_GITHUB_API_URL is an http:// URL of another host (http://ghe.example.org/api/v3) with CI_GITHUB_TOKEN set",
    "ci-agent refuses to start (exit 2) saying the token would go unencrypted and to use https://, without "
    "echoing the token; http://127.0.0.1 is accepted",
)
def test_a_clear_text_api_url_is_refused_at_start(
    tmp_path: Path, secret: Callable[[str], str], observed: Callable[[str], None]
) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CI_REPO_URL": "https://example.org/app.git",
           "CI_IMAGE": "127.0.0.1:5000/x/app", "CI_ALLOW_UNSIGNED": "true", "CI_GITHUB_TOKEN": secret(TOKEN),
           "CI_GITHUB_REPO": GITHUB_REPO, "CI_GITHUB_API_URL": "http://ghe.example.org/api/v3",
           "CI_PORT": str(free_port()), "CI_DASHBOARD_PORT": str(free_port()), "STATE_DIR": str(tmp_path / "state"),
           "LOG_DIR": str(tmp_path / "logs"), "CI_WORK_DIR": str(tmp_path / "work")}
    try:
        done = subprocess.run([sys.executable, "-m", "ci_agent", "serve"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"ci-agent started with a clear-text API URL: {exc.stderr!r}")
    said = done.stdout + done.stderr
    observed(f"exit {done.returncode}: {said.strip()[-220:]}")
    assert done.returncode == 2
    assert "CI_GITHUB_API_URL" in said and "unencrypted" in said and "https://" in said
    assert TOKEN not in said
