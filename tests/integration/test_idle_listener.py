"""An idle ``ci-agent serve`` sleeps until a connection opens (no timers); what it must still do."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import httpx

from tests.support.ci_agent_server import StartAgent
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
