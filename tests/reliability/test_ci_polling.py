"""Polling the repository (CI_POLL_INTERVAL) when the remote fails: a real ``ci-agent serve``, real git remotes.

The remote goes away (its bare repository renamed) and comes back; another remote accepts the
connection and never answers. The agent must keep serving, say so once per streak, and recover.
A push of many release tags at once must not queue a release each.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.ci_agent_server import CiAgentProcess, StartAgent, registry_tags
from tests.support.docker_env import DockerJanitor
from tests.support.git_repos import GitProject, git
from tests.support.silent_server import SilentServer
from tests.support.smtp_server import SmtpServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PASSING = "#!/bin/sh\necho host tests passed\n"
POLLING = {"CI_TEST_RUNNER": "host", "CI_TEST_COMMAND": "sh tests/run.sh", "CI_POLL_INTERVAL": "5",
           # The repeated failures of a streak are logged at DEBUG only: the test waits for them.
           "LOG_LEVEL": "DEBUG"}
FAILED = "polling the repository failed"
AGAIN = "polling failed again"
RECOVERED = "polling the repository works again"


def mail_env(smtp: SmtpServer) -> dict[str, str]:
    return {"SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port), "SMTP_SECURITY": "none",
            "NOTIFY_FROM": "ci@example.invalid", "NOTIFY_TO": "dev@example.invalid"}


def count(agent: CiAgentProcess, text: str) -> int:
    return agent.process.output.count(text)


def serving(agent: CiAgentProcess) -> bool:
    return httpx.get(f"{agent.url}/healthz", timeout=5).status_code == 200 and \
        httpx.get(f"{agent.dashboard_url}/runs", timeout=5).status_code == 200


@pytest.mark.reliability(
    "CI_POLL_INTERVAL=5 with email configured; the git remote becomes unreachable (its bare repository "
    "renamed) for several polls, then comes back, and a commit is pushed",
    "one warning and one email for the whole streak (later failures are DEBUG lines, with a growing "
    "backoff), webhook and dashboard keep answering, one 'works again' line when the remote is back, and "
    "the new commit is released by polling",
)
def test_remote_unreachable_while_polling(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    smtp_server: SmtpServer,
    observed: Callable[[str], None],
    produced: Callable[[str, str | bytes], None],
) -> None:
    first = git_project.commit_sample("feat: first", test_script=PASSING)
    agent = start_ci_agent(**POLLING, **mail_env(smtp_server))
    agent.process.wait_until(lambda: any(run["commit"] == first and run["status"] == "succeeded"
                                         for run in agent.runs()), timeout=120, what="the head released")
    moved = git_project.bare.with_name("moved-away.git")
    git_project.bare.rename(moved)
    try:
        agent.process.wait_until(lambda: count(agent, AGAIN) >= 2, timeout=90, what="a streak of failed polls")
        warnings, still_serving = count(agent, FAILED), serving(agent)
    finally:
        moved.rename(git_project.bare)
    agent.process.wait_until(lambda: count(agent, RECOVERED) >= 1, timeout=90, what="polling to recover")
    mails = smtp_server.wait_for_messages(1, timeout=30)
    for mail in mails:
        produced("polling email", mail.as_string())
    second = git_project.commit({"www/index.html": "<p>two</p>\n"}, "fix: second")
    git_project.push()
    agent.process.wait_until(lambda: any(run["commit"] == second and run["status"] == "succeeded"
                                         for run in agent.runs()), timeout=120, what="the new commit released")
    observed(
        f"{warnings} warning(s) for a streak of {count(agent, AGAIN) + 1} failed polls; serving during it: "
        f"{still_serving}; {len(smtp_server.messages)} email(s) '{mails[0]['Subject']}'; "
        f"{count(agent, RECOVERED)} recovery line(s); the next push released by polling"
    )
    assert warnings == 1 and count(agent, FAILED) == 1
    assert still_serving
    assert count(agent, RECOVERED) == 1
    assert len(smtp_server.messages) == 1 and "polling" in str(mails[0]["Subject"])


@pytest.mark.reliability(
    "CI_POLL_INTERVAL=5 and CI_REPO_URL points at an HTTP server that accepts the connection and never "
    "answers (a hanging remote)",
    "each ls-remote is given up after a bounded time (5 s here: the interval, at most 60 s) and its git "
    "processes killed (the server sees the connection closed); one warning saying it did not answer; the "
    "agent keeps serving; no run is queued",
)
def test_hanging_remote_while_polling(
    start_ci_agent: StartAgent, tmp_path: Path, observed: Callable[[str], None]
) -> None:
    with SilentServer() as silent_server:
        agent = start_ci_agent(**POLLING, CI_REPO_URL=f"http://127.0.0.1:{silent_server.port}/app.git")
        agent.process.wait_until(lambda: count(agent, AGAIN) >= 1 and silent_server.closed_by_client >= 2,
                                 timeout=90, what="two polls given up")
        output = agent.process.output
        warning = next(line for line in output.splitlines() if FAILED in line)
        runs = agent.runs()
        observed(
            f"{silent_server.accepted} connection(s) accepted, {silent_server.closed_by_client} closed by the "
            f"agent's git; warning: {warning[-160:]!r}; serving: {serving(agent)}; {len(runs)} run(s)"
        )
        assert count(agent, FAILED) == 1
        assert "did not answer within 5s" in warning
        assert serving(agent)
        assert runs == []


@pytest.mark.reliability(
    "CI_POLL_INTERVAL=5; 60 tags v1.0.0 … v1.0.59 are pushed in one `git push --tags` (GitHub itself sends no "
    "webhook for a push of more than three tags)",
    "the poll that finds them queues one run, for the highest tag, released as 1.0.59; the other 59 are "
    "remembered, never run, then or later (the next push is released as 1.0.60); one log line says 60 new "
    "tags, v1.0.59 released, 59 skipped",
)
def test_many_tags_pushed_at_once_release_only_the_highest(
    start_ci_agent: StartAgent, git_project: GitProject, tmp_path: Path, ci_image_name: str,
    docker_janitor: DockerJanitor, observed: Callable[[str], None],
) -> None:
    docker_janitor.images.update({f"{ci_image_name}:1.0.59", f"{ci_image_name}:1.0.60"})
    head = git_project.commit_sample("feat: first", test_script=PASSING)
    agent = start_ci_agent(**POLLING)
    agent.process.wait_until(lambda: any(run["commit"] == head and run["status"] == "succeeded"
                                         for run in agent.runs()), timeout=120, what="the head released")
    tags = [f"v1.0.{patch}" for patch in range(60)]
    for tag in tags:
        git("tag", tag, cwd=git_project.clone)
    git("push", "--quiet", "origin", "--tags", cwd=git_project.clone)
    state = tmp_path / "state" / "poll-refs.json"
    agent.process.wait_until(lambda: all(f"refs/tags/{tag}" in json.loads(state.read_text())["refs"] for tag in tags),
                             timeout=60, what="a poll that saw the 60 tags")
    queued = [run["ref"] for run in agent.runs() if run["ref"].startswith("refs/tags/")]
    assert queued == ["refs/tags/v1.0.59"], f"{len(queued)} tag runs queued: {queued[:5]}…"
    agent.process.wait_until(lambda: any(run["ref"] == "refs/tags/v1.0.59" and run["finished_at"]
                                         for run in agent.runs()), timeout=120, what="the v1.0.59 run finished")
    # A later poll (it finds the next push) must not queue a skipped tag either.
    after = git_project.commit({"www/index.html": "<p>two</p>\n"}, "fix: after the tags")
    git_project.push()
    agent.process.wait_until(lambda: any(run["commit"] == after and run["finished_at"] for run in agent.runs()),
                             timeout=120, what="the next push run by a later poll")
    tag_runs = [run for run in agent.runs() if run["ref"].startswith("refs/tags/")]
    line = next((text for text in agent.process.output.splitlines() if "at once" in text), "")
    observed(f"{len(tag_runs)} tag run(s): {[(r['ref'], r['status'], r['version']) for r in tag_runs]}; "
             f"registry {registry_tags(ci_image_name)}; log: {line[line.find('poll:'):]!r}")
    assert [(r["ref"], r["status"], r["version"]) for r in tag_runs] == [("refs/tags/v1.0.59", "succeeded", "1.0.59")]
    assert "60 new release tags at once; releasing only the highest, v1.0.59; 59 skipped (v1.0.0 … v1.0.58)" in line
    assert [run["version"] for run in agent.runs() if run["commit"] == after] == ["1.0.60"]
