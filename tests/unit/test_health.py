"""The health verdict (pure logic over a fake engine and clock): HEALTHCHECK first, then the URL, then
"still running after the grace period"; a container that exits or restarts fails at once, saying how."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from cd_agent.engine import ContainerInfo
from cd_agent.health import HealthChecker

RUNNING = ContainerInfo(
    id="c", name="app", image="app:1", image_id="sha256:1", status="running", running=True,
    restarting=False, exit_code=0, restart_count=0,
)


class FakeDocker:
    """Answers ``container()`` with the given states in turn, repeating the last one."""

    def __init__(self, *states: ContainerInfo | None) -> None:
        self._states: Iterator[ContainerInfo | None] = iter(states)
        self._last: ContainerInfo | None = None

    def container(self, name_or_id: str) -> ContainerInfo | None:
        self._last = next(self._states, self._last)
        return self._last


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def checker(docker: FakeDocker, time: FakeTime, *, url: str | None = None, probe=None) -> HealthChecker:
    return HealthChecker(
        docker, url=url, timeout=10, grace=2, clock=time.clock, sleep=time.sleep,
        probe=probe or (lambda url, timeout: (False, "never asked")),
    )


def test_the_image_healthcheck_wins_over_the_url() -> None:
    starting = replace(RUNNING, health_status="starting")
    healthy = replace(RUNNING, health_status="healthy", health_output=("ok",))
    time = FakeTime()

    verdict = checker(FakeDocker(starting, starting, starting, healthy), time, url="http://x/").wait("c")

    assert (verdict.healthy, verdict.method, verdict.output) == (True, "healthcheck", "ok")
    assert time.now < 10


def test_an_unhealthy_healthcheck_fails_with_its_output() -> None:
    unhealthy = replace(RUNNING, health_status="unhealthy", health_output=("a", "b", "connection refused"))

    verdict = checker(FakeDocker(unhealthy), FakeTime()).wait("c")

    assert not verdict.healthy and "unhealthy" in verdict.reason and verdict.output.endswith("connection refused")


def test_a_url_that_never_answers_fails_at_the_deadline() -> None:
    time = FakeTime()

    def refused(url: str, timeout: float) -> tuple[bool, str]:
        return False, f"GET {url}: ConnectError"

    verdict = checker(FakeDocker(RUNNING), time, url="http://x/", probe=refused).wait("c")

    assert not verdict.healthy and verdict.method == "url"
    assert "within 10s" in verdict.reason and "ConnectError" in verdict.output
    assert 10 <= time.now < 11


def test_a_url_answering_2xx_is_healthy() -> None:
    answers = iter([(False, "refused"), (True, "GET http://x/: HTTP 200")])

    verdict = checker(FakeDocker(RUNNING), FakeTime(), url="http://x/", probe=lambda u, t: next(answers)).wait("c")

    assert verdict.healthy and verdict.output == "GET http://x/: HTTP 200"


def test_without_check_or_url_it_must_keep_running_through_the_grace_period() -> None:
    time = FakeTime()
    assert checker(FakeDocker(RUNNING), time).wait("c").healthy
    assert time.now >= 2

    exited = replace(RUNNING, running=False, status="exited", exit_code=3)
    time = FakeTime()
    verdict = checker(FakeDocker(RUNNING, exited), time).wait("c")
    assert not verdict.healthy and "exited with code 3" in verdict.reason and time.now < 2


def test_a_restarting_container_fails_at_once() -> None:
    restarting = replace(RUNNING, restarting=True, restart_count=1, exit_code=1)

    verdict = checker(FakeDocker(restarting), FakeTime(), url="http://x/").wait("c")

    assert not verdict.healthy and verdict.reason == (
        "the container exited with code 1 and is being restarted by its restart policy (once so far)"
    )


@pytest.mark.parametrize(
    ("restart_count", "said"),
    [(1, "restarted it once"), (2, "restarted it 2 times")],
)
def test_a_container_restarted_and_running_again_does_not_claim_exit_code_0(restart_count: int, said: str) -> None:
    """After a restart the engine shows ExitCode 0 (the new run's): the reason must not pass that off as
    the exit code of the release (it said "restarted 1 times, last exit code 0" for a process exiting 1)."""
    running_again = replace(RUNNING, restart_count=restart_count, exit_code=0)

    verdict = checker(FakeDocker(running_again), FakeTime()).wait("c")

    assert not verdict.healthy
    assert said in verdict.reason and "exit code 0" not in verdict.reason and "code 0" not in verdict.reason


def test_a_vanished_container_is_not_healthy() -> None:
    verdict = checker(FakeDocker(None), FakeTime()).wait("c")

    assert not verdict.healthy and "disappeared" in verdict.reason


def test_the_url_is_asked_at_once_then_often_with_a_timeout_growing_to_two_seconds() -> None:
    """A stalled request (the engine's proxy holding it while the network comes up) must not hide a
    crash for 2 s, and a slow app must still get its 2 s in the end."""
    time = FakeTime()
    asked: list[tuple[float, float]] = []

    def slow(url: str, timeout: float) -> tuple[bool, str]:
        asked.append((time.now, timeout))
        time.now += timeout  # every request runs into its timeout
        return False, f"GET {url}: ReadTimeout"

    verdict = checker(FakeDocker(RUNNING), time, url="http://x/", probe=slow).wait("c")

    assert not verdict.healthy and "within 10s" in verdict.reason
    assert asked[0] == (0.0, 0.25)
    assert asked[1][0] == pytest.approx(0.25 + 0.05)  # the first pause is short
    timeouts = [timeout for _, timeout in asked]
    assert timeouts == sorted(timeouts[:-1]) + timeouts[-1:]  # growing, but for the last one cut at the deadline
    assert max(timeouts) == 2.0 and all(at + timeout <= 10 + 0.2 for at, timeout in asked)  # 0.2 s at the least
