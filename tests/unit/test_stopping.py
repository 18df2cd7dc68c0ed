"""How a stop of the app container is told apart from a kill after CD_STOP_TIMEOUT."""

from __future__ import annotations

from dataclasses import replace

import pytest
from loguru import logger

from cd_agent.apps import single_target
from cd_agent.container_spec import build_spec
from cd_agent.engine import ContainerInfo
from cd_agent.errors import DockerUnavailable
from cd_agent.settings import CdSettings
from cd_agent.stopping import StopOutcome, log_stop, stop_container
from shared.settings import load_settings

RUNNING = ContainerInfo(
    id="old", name="app", image="r/app:1.0.0", image_id="sha256:old", status="running", running=True,
    restarting=False, exit_code=0, restart_count=0,
)


class StoppingEngine:
    """Stopping leaves the container as ``after``, and takes ``seconds`` on the fake clock."""

    def __init__(self, after: ContainerInfo, seconds: float) -> None:
        self.after, self.seconds, self.now, self.timeouts = after, seconds, 100.0, list[float]()

    def stop(self, container: str, *, timeout: float) -> None:
        self.timeouts.append(timeout)
        self.now += self.seconds

    def container(self, name_or_id: str) -> ContainerInfo | None:
        return self.after


def _stop(after: ContainerInfo, seconds: float) -> tuple[StopOutcome, list[float]]:
    engine = StoppingEngine(after, seconds)
    outcome = stop_container(engine, "old", timeout=3, monotonic=lambda: engine.now)  # type: ignore[arg-type]
    return outcome, engine.timeouts


@pytest.mark.parametrize(
    ("exit_code", "oom", "killed"),
    [
        (137, False, True),   # SIGKILL from the engine after the timeout
        (143, False, False),  # SIGTERM's default action (under an init)
        (0, False, False),    # the app's own handler exited cleanly
        (137, True, False),   # the OOM killer, not the timeout
    ],
)
def test_a_kill_is_exit_code_137_without_the_oom_killer(exit_code: int, oom: bool, killed: bool) -> None:
    after = replace(RUNNING, running=False, status="exited", exit_code=exit_code, oom_killed=oom)

    outcome, timeouts = _stop(after, 3.2)

    assert outcome == StopOutcome(pytest.approx(3.2), killed=killed, exit_code=exit_code)  # type: ignore[arg-type]
    assert timeouts == [3]


def test_a_container_gone_after_the_stop_was_not_killed() -> None:
    engine = StoppingEngine(RUNNING, 0.1)
    engine.container = lambda name_or_id: None  # type: ignore[method-assign]
    outcome = stop_container(engine, "old", timeout=3, monotonic=lambda: engine.now)  # type: ignore[arg-type]
    assert outcome.killed is False and outcome.exit_code is None


def test_an_engine_gone_after_the_stop_does_not_fail_it() -> None:
    engine = StoppingEngine(RUNNING, 0.1)

    def gone(name_or_id: str) -> ContainerInfo | None:
        raise DockerUnavailable("docker inspect container old: cannot reach the Docker Engine")

    engine.container = gone  # type: ignore[method-assign]
    outcome = stop_container(engine, "old", timeout=3, monotonic=lambda: engine.now)  # type: ignore[arg-type]
    assert outcome.killed is False and outcome.exit_code is None


def _logged(outcome: StopOutcome, *, init: bool) -> list[str]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="INFO")
    try:
        log_stop(logger, "the old container (1.0.0)", outcome, timeout=10, init=init)
    finally:
        logger.remove(sink)
    return lines


def test_the_log_says_a_kill_ran_into_the_timeout_and_names_cd_init() -> None:
    assert _logged(StopOutcome(10.4, killed=True, exit_code=137), init=False) == [
        "the old container (1.0.0) ran into CD_STOP_TIMEOUT=10s and was killed (SIGKILL, exit code 137) after "
        "10.4s: its main process (PID 1) does not handle SIGTERM: set CD_INIT=true, or make it exit on SIGTERM"
    ]
    assert "ignores SIGTERM even under CD_INIT" in _logged(StopOutcome(10.4, killed=True, exit_code=137), init=True)[0]
    assert _logged(StopOutcome(0.25, killed=False, exit_code=143), init=True) == [
        "stopped the old container (1.0.0) in 0.2s, within CD_STOP_TIMEOUT=10s"
    ]


def _settings(**env: str) -> CdSettings:
    return load_settings(CdSettings, {"CD_IMAGE": "127.0.0.1:5000/o/app", "CD_CONTAINER_NAME": "app", **env})


def test_cd_init_defaults_to_off_and_reaches_the_container_spec() -> None:
    assert _settings().cd_init is False
    assert build_spec(single_target(_settings()), image="r:1", version="1", digest=None, env={}).init is False
    on = single_target(_settings(CD_INIT="true"))
    assert build_spec(on, image="r:1", version="1", digest=None, env={}).init is True
