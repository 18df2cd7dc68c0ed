"""An idle ``ci-agent serve`` sleeps until a connection opens (no timers) and holds only what serving needs."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import httpx

from tests.support.ci_agent_server import CiAgentProcess, StartAgent, push_payload
from tests.support.git_repos import GitProject
from tests.support.polling import wait_for


def _date_of(url: str) -> float:
    # A new connection each time, so the listener has none open in between and goes to sleep.
    response = httpx.get(f"{url}/healthz")
    assert response.status_code == 200
    return parsedate_to_datetime(response.headers["date"]).timestamp()


def test_after_sleeping_the_listener_answers_with_a_current_date_and_stops_on_sigterm(
    start_ci_agent: StartAgent,
) -> None:
    agent = start_ci_agent()
    agent.wait_ready()
    first = _date_of(agent.url)
    # Let the wall clock move on while nothing is connected (uvicorn refreshed Date on a timer).
    wait_for(lambda: time.time() >= first + 3, timeout=10, what="three seconds of idleness")

    before = time.time()
    second = _date_of(agent.url)

    assert second >= first + 2  # not the Date of the last tick before the sleep
    assert int(before) <= second + 1  # Date has one-second resolution

    process = agent.process.process
    assert process is not None
    process.terminate()  # idle: a stop must wake the sleeping loop
    assert process.wait(timeout=15) == 0


def _imported(agent: CiAgentProcess, module: str) -> bool:
    """Whether the agent imported ``module``; started with PYTHONPROFILEIMPORTTIME=1, Python logs each import."""
    return any(
        line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == module
        for line in agent.process.output.splitlines()
    )


def test_the_docker_sdk_is_not_imported_until_a_run_needs_the_pipeline(
    start_ci_agent: StartAgent, git_project: GitProject
) -> None:
    agent = start_ci_agent(PYTHONPROFILEIMPORTTIME="1")
    agent.wait_ready()
    # Serving, and answering: still nothing of what only a run uses.
    assert _imported(agent, "uvicorn")
    for module in ("docker", "requests", "ci_agent.pipeline", "ci_agent.builder"):
        assert not _imported(agent, module), module

    # A commit the repository does not have: the run builds the pipeline, then fails at checkout.
    answer = agent.deliver(push_payload(git_project, "f" * 40, "not in the repository"))
    assert answer.status_code == 202, answer.text
    run = agent.wait_finished(answer.json()["run"])
    assert (run["status"], run["failed_step"]) == ("failed", "checkout"), run
    assert _imported(agent, "ci_agent.pipeline")
