"""CI_POLL_INTERVAL end to end: a real ``ci-agent serve``, a real git remote, the real registry and Docker.

No webhook is delivered unless a test says so: the agent finds pushes and tags with ``git ls-remote``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from ci_agent.poller import GitRefSource, RemoteRef
from tests.support.ci_agent_server import CiAgentProcess, StartAgent, gated_test_script, push_payload, registry_tags
from tests.support.git_http import TOKEN_USER, GitHttpServer, git_argv_recorder
from tests.support.git_repos import GitProject, git
from tests.support.polling import wait_for
from tests.support.silent_server import SilentServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PASSING = "#!/bin/sh\necho host tests passed\n"
POLLING = {"CI_TEST_RUNNER": "host", "CI_TEST_COMMAND": "sh tests/run.sh", "CI_POLL_INTERVAL": "5"}
# A few poll intervals plus a build.
RELEASED_WITHIN = 120


def seen_refs(state: Path) -> dict[str, str]:
    path = state / "poll-refs.json"
    return dict(json.loads(path.read_text())["refs"]) if path.exists() else {}


def runs_of(agent: CiAgentProcess, commit: str) -> list[dict[str, Any]]:
    return [run for run in agent.runs() if run["commit"] == commit]


def why(run: dict[str, Any]) -> str:
    """What a failed assertion on a run should show: how it ended, and why."""
    return f"run {run['number']} {run['status']} {run['version']}: {run['failed_step']} {run['error'] or run['reason']}"


def finished_run_of(agent: CiAgentProcess, commit: str, ref: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        for run in agent.runs():
            if run["commit"] == commit and run["ref"] == ref and run["finished_at"] is not None:
                return run
        return None

    found: dict[str, Any] | None = None

    def check() -> bool:
        nonlocal found
        found = done()
        return found is not None

    agent.process.wait_until(check, timeout=RELEASED_WITHIN, what=f"a finished run of {ref} at {commit[:12]}")
    assert found is not None
    return found


def test_pushes_and_release_tags_are_released_by_polling_and_a_restart_queues_nothing_again(
    start_ci_agent: StartAgent, git_project: GitProject, ci_image_name: str, tmp_path: Path
) -> None:
    first = git_project.commit_sample("feat: first", test_script=PASSING)
    git_project.tag("v0.0.9")  # there before the first poll: remembered, never run
    agent = start_ci_agent(**POLLING)

    # The first poll queues the unreleased head.
    run_1 = finished_run_of(agent, first, "refs/heads/main")
    assert (run_1["status"], run_1["version"]) == ("succeeded", "0.1.0"), why(run_1)
    assert run_1["details"]["source"] == "poll" and run_1["delivery_id"] is None

    second = git_project.commit({"www/index.html": "<p>two</p>\n"}, "fix: second")
    git_project.push()
    run_2 = finished_run_of(agent, second, "refs/heads/main")
    assert (run_2["status"], run_2["version"], run_2["details"]["source"]) == ("succeeded", "0.1.1", "poll"), why(run_2)

    git_project.tag("v1.2.3", message="release 1.2.3")
    run_3 = finished_run_of(agent, second, "refs/tags/v1.2.3")
    outcome = (run_3["status"], run_3["version"], run_3["details"]["source"])
    assert outcome == ("succeeded", "1.2.3", "poll"), why(run_3)
    assert registry_tags(ci_image_name) == ["0.1.0", "0.1.1", "1.2.3", "latest"]

    # A restart remembers what it saw: the next push is the only new run (the poll that finds it
    # would have queued the old head or tag too, had it forgotten them).
    agent.process.stop()
    agent = start_ci_agent(**POLLING)
    third = git_project.commit({"www/index.html": "<p>three</p>\n"}, "fix: third")
    git_project.push()
    run_4 = finished_run_of(agent, third, "refs/heads/main")
    assert (run_4["status"], run_4["version"]) == ("succeeded", "1.2.4"), why(run_4)
    assert [(run["number"], run["ref"]) for run in agent.runs()] == [
        (4, "refs/heads/main"), (3, "refs/tags/v1.2.3"), (2, "refs/heads/main"), (1, "refs/heads/main")
    ]
    assert "refs/tags/v0.0.9" in seen_refs(tmp_path / "state")


def test_a_commit_both_delivered_and_polled_runs_once(
    start_ci_agent: StartAgent, git_project: GitProject, ci_image_name: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    first = git_project.commit_sample("feat: first", test_script=gated_test_script(gate))
    agent = start_ci_agent(**POLLING)
    agent.process.wait_until(lambda: any(run["status"] == "running" for run in runs_of(agent, first)),
                             timeout=60, what="the first run to be running")
    # The worker is busy: whatever order the webhook and the poller see B in, B's runs wait in the queue.
    second = git_project.commit({"www/index.html": "<p>two</p>\n"}, "fix: second")
    git_project.push()
    answer = agent.deliver(push_payload(git_project, second, "fix: second"))
    assert answer.status_code == 202, answer.text
    agent.process.wait_until(lambda: seen_refs(tmp_path / "state").get("refs/heads/main") == second,
                             timeout=60, what="the poller to see B")
    gate.touch()
    runs = agent.wait_all_finished(len(agent.runs()), timeout=RELEASED_WITHIN)

    of_b = [run for run in runs if run["commit"] == second]
    started = [run for run in of_b if run["started_at"] is not None]
    summary = [(run["number"], run["status"], run["version"], run["reason"] or run["error"]) for run in runs]
    assert len(started) == 1, summary
    assert started[0]["status"] == "succeeded", summary
    assert all(run["status"] == "superseded" for run in of_b if run is not started[0]), summary
    # Run 1 may have been superseded by B's run (a newer commit of the branch): either way B is the
    # one release built from B.
    releases = [tag for tag in registry_tags(ci_image_name) if tag != "latest"]
    assert started[0]["version"] in releases and len(releases) == len([run for run in runs if run["version"]])


def test_ls_remote_sends_url_credentials_in_the_environment_and_peels_tags(
    git_project: GitProject, tmp_path: Path
) -> None:
    sha = git_project.commit({"a.txt": "a\n"}, "first")
    git_project.push()
    git("tag", "-a", "v1.0.0", "-m", "release", cwd=git_project.clone)
    git("tag", "nightly", cwd=git_project.clone)
    git("push", "--quiet", "origin", "--tags", cwd=git_project.clone)
    tag_object = git("rev-parse", "v1.0.0", cwd=git_project.clone).strip()
    password = "ghp_polling-token-never-in-argv"
    wrapper, argv_log = git_argv_recorder(tmp_path / "bin")
    with GitHttpServer(git_project.bare.parent, TOKEN_USER, password) as server:
        url = server.url(git_project.bare.name, user=TOKEN_USER, password=password)
        refs = GitRefSource(url, "main", timeout=30, git=str(wrapper)).refs()
        refused = server.refused

    assert refs == {"refs/heads/main": RemoteRef(sha, sha), "refs/tags/v1.0.0": RemoteRef(tag_object, sha)}
    assert server.authorized >= 1 and refused == 0
    assert password not in argv_log.read_text()


def test_cancel_kills_an_ls_remote_in_flight() -> None:
    """What ``ci-agent serve`` does on SIGTERM: git runs in a session of its own and must not outlive the agent."""
    errors: list[BaseException] = []
    with SilentServer() as server:
        source = GitRefSource(f"http://127.0.0.1:{server.port}/app.git", "main", timeout=600)

        def poll() -> None:
            try:
                source.refs()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=poll)
        thread.start()
        wait_for(lambda: server.accepted >= 1, timeout=30, what="git to connect")
        source.cancel()
        thread.join(timeout=30)
        wait_for(lambda: server.closed_by_client >= 1, timeout=30, what="git's connection closed")

    assert not thread.is_alive()
    assert [str(error) for error in errors] == ["the agent is stopping"]
