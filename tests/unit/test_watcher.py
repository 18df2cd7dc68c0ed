from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cd_agent import deploy_child
from cd_agent.apps import AppTarget, single_target
from cd_agent.child_deploys import NO_JOB, ChildDeploy, ChildDeploys, ChildError
from cd_agent.settings import CdSettings
from cd_agent.state import DeployState, Release
from cd_agent.watcher import JITTER, MAX_WAIT, RolloutOutcome, Watcher, poll_delay
from shared.errors import RateLimited, RegistryAuthError, RegistryUnavailable
from shared.registry import RateLimit
from shared.settings import load_settings
from shared.testing import capture_logs
from tests.support.polling import wait_for

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def digest_of(tag: str) -> str:
    return "sha256:" + tag.replace(".", "").ljust(64, "0")


@dataclass
class FakeRegistry:
    """Answers from functions; records the HEAD requests (each one a request to the registry)."""

    tags: Callable[[], list[str]]
    rate_limit: RateLimit | None = None
    heads: list[str] = field(default_factory=list)

    def list_tags(self) -> list[str]:
        return self.tags()

    def manifest_digest(self, tag: str) -> str | None:
        self.heads.append(tag)
        return digest_of(tag) if tag in self.tags() else None


@dataclass
class Report:
    outcome: str
    version: str
    error: str | None = None


@dataclass
class FakeDeployer:
    """Deploys by writing the state, like the real one after a healthy swap."""

    state: DeployState
    outcome: Callable[[str], str] = lambda version: "deployed"
    deployed: list[tuple[str, str | None]] = field(default_factory=list)

    def deploy(self, version: str, *, digest: str | None = None, force: bool = False) -> Report:
        self.deployed.append((version, digest))
        outcome = self.outcome(version)
        if outcome == "deployed":
            self.state.record_deployed(Release(version, digest), self.state.current)
        else:
            self.state.quarantine(version, "unhealthy")
        return Report(outcome, version, None if outcome == "deployed" else "health check failed")


class FakeTime:
    """A clock that moves only when the watcher sleeps; stops the loop after ``sleeps`` waits."""

    def __init__(self, stop: threading.Event, sleeps: int) -> None:
        self.now = T0
        self.waits: list[float] = []
        self.stop = stop
        self.sleeps = sleeps

    def clock(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += timedelta(seconds=seconds)
        if len(self.waits) >= self.sleeps:
            self.stop.set()


@pytest.fixture
def state(tmp_path):
    with DeployState(tmp_path / "cd.sqlite3") as state:
        yield state


def settings(**environ: str) -> CdSettings:
    return load_settings(
        CdSettings,
        {"CD_IMAGE": "127.0.0.1:5000/o/app", "CD_CONTAINER_NAME": "app", "CD_POLL_INTERVAL": "60", **environ},
    )


def app() -> tuple[CdSettings, AppTarget]:
    """The settings and the app they define, as ``cd-agent watch`` hands them to a deploy process."""
    return settings(), single_target(settings())


def watcher(state, registry, deployer, time: FakeTime | None = None, **environ: str) -> Watcher:
    if time is None:
        return Watcher(
            single_target(settings(**environ)), registry, deployer, state, clock=lambda: T0, jitter=lambda: 0.0
        )
    return Watcher(single_target(settings(**environ)), registry, deployer, state, clock=time.clock,
                   sleep=time.sleep, jitter=lambda: 0.0)


def test_a_candidate_is_deployed_with_its_digest(state):
    state.set_current(Release("1.0.0"))
    registry = FakeRegistry(lambda: ["latest", "1.0.0", "1.1.0", "sha-abc"])
    deployer = FakeDeployer(state)

    report = watcher(state, registry, deployer).poll_once()

    assert deployer.deployed == [("1.1.0", digest_of("1.1.0"))]
    assert report.candidate == "1.1.0"
    assert report.deployed == "1.0.0"
    assert report.deploy is not None and report.deploy.outcome == "deployed"
    assert registry.heads == ["1.1.0"]
    assert state.last_poll_at == T0


def test_from_nothing_the_newest_release_is_deployed(state):
    registry = FakeRegistry(lambda: ["0.9.0", "1.0.0", "0.10.0"])
    deployer = FakeDeployer(state)

    watcher(state, registry, deployer).poll_once()

    assert deployer.deployed == [("1.0.0", digest_of("1.0.0"))]


def test_an_idle_poll_deploys_nothing_and_asks_for_no_digest(state):
    state.set_current(Release("1.1.0"))
    registry = FakeRegistry(lambda: ["1.0.0", "1.1.0", "latest"])
    deployer = FakeDeployer(state)

    report = watcher(state, registry, deployer).poll_once()

    assert report.candidate is None
    assert report.deploy is None
    assert deployer.deployed == []
    assert registry.heads == []
    assert state.last_poll_at == T0


def test_constraint_and_quarantine_are_respected(state):
    state.quarantine("0.9.2", "unhealthy")
    registry = FakeRegistry(lambda: ["0.9.1", "0.9.2", "1.0.0"])
    deployer = FakeDeployer(state)

    watcher(state, registry, deployer, CD_VERSION_CONSTRAINT="<1.0.0").poll_once()

    assert deployer.deployed == [("0.9.1", digest_of("0.9.1"))]


def test_a_tag_listed_without_a_manifest_is_not_deployed(state):
    registry = FakeRegistry(lambda: ["1.0.0"])
    registry.manifest_digest = lambda tag: None  # type: ignore[method-assign]
    deployer = FakeDeployer(state)

    report = watcher(state, registry, deployer).poll_once()

    assert report.candidate == "1.0.0"
    assert deployer.deployed == []


def test_registry_errors_reach_the_caller_of_poll_once(state):
    def down() -> list[str]:
        raise RegistryUnavailable("connection refused")

    with pytest.raises(RegistryUnavailable):
        watcher(state, FakeRegistry(down), FakeDeployer(state)).poll_once()


def failing(times: int, error: Exception, tags: list[str]) -> Callable[[], list[str]]:
    calls = 0

    def list_tags() -> list[str]:
        nonlocal calls
        calls += 1
        if calls <= times:
            raise error
        return tags

    return list_tags


def test_an_outage_is_logged_once_backs_off_and_recovers(state):
    stop = threading.Event()
    time = FakeTime(stop, sleeps=5)  # 4 backoff waits, then the normal wait after the good poll
    registry = FakeRegistry(failing(4, RegistryUnavailable("connection refused"), ["1.0.0"]))
    deployer = FakeDeployer(state)

    with capture_logs("INFO") as logs:
        watcher(state, registry, deployer, time).run_forever(stop)

    messages = [entry.message for entry in logs]
    assert sum("registry unreachable: connection refused; backing off" in m for m in messages) == 1
    assert sum("registry reachable again" in m for m in messages) == 1
    backoff, normal = time.waits[:4], time.waits[4]
    assert all(later > earlier for earlier, later in zip(backoff, backoff[1:], strict=False))
    assert backoff[0] >= 60
    assert normal == 60
    assert deployer.deployed == [("1.0.0", digest_of("1.0.0"))]
    assert state.last_error is None
    assert state.next_poll_at == time.now  # the wait just finished was the one recorded


def test_backoff_is_capped_at_ten_intervals(state):
    stop = threading.Event()
    time = FakeTime(stop, sleeps=12)
    registry = FakeRegistry(failing(100, RegistryUnavailable("503 Service Unavailable"), []))

    watcher(state, registry, FakeDeployer(state), time).run_forever(stop)

    assert max(time.waits) <= 600
    assert time.waits[-1] == 600
    assert state.last_error == "registry unreachable: 503 Service Unavailable"


def test_retry_after_of_a_429_is_honoured(state):
    stop = threading.Event()
    time = FakeTime(stop, sleeps=2)
    registry = FakeRegistry(failing(1, RateLimited("429 Too Many Requests", retry_after=300), ["1.0.0"]))
    deployer = FakeDeployer(state)

    with capture_logs("INFO") as logs:
        watcher(state, registry, deployer, time).run_forever(stop)

    assert time.waits == [300, 60]
    assert any("registry rate limit: 429 Too Many Requests; backing off" in entry.message for entry in logs)
    assert deployer.deployed == [("1.0.0", digest_of("1.0.0"))]


def test_a_huge_retry_after_is_capped(state):
    stop = threading.Event()
    time = FakeTime(stop, sleeps=1)
    registry = FakeRegistry(failing(1, RateLimited("429", retry_after=10**6), []))

    watcher(state, registry, FakeDeployer(state), time).run_forever(stop)

    assert time.waits == [MAX_WAIT]


def test_other_errors_are_logged_once_per_streak_and_the_loop_goes_on(state):
    stop = threading.Event()
    time = FakeTime(stop, sleeps=4)
    registry = FakeRegistry(failing(3, RegistryAuthError("credentials refused by 127.0.0.1:5000 for user me"), []))

    with capture_logs("INFO") as logs:
        watcher(state, registry, FakeDeployer(state), time).run_forever(stop)

    errors = [entry for entry in logs if entry.level == "ERROR"]
    assert len(errors) == 1
    assert "credentials refused" in errors[0].message
    assert time.waits == [60, 60, 60, 60]
    assert state.last_error is None  # the fourth poll worked


def test_an_unexpected_exception_is_logged_with_its_traceback_and_does_not_end_the_loop(state):
    stop = threading.Event()
    time = FakeTime(stop, sleeps=3)
    registry = FakeRegistry(lambda: ["1.0.0", "1.1.0"])
    attempts: list[str] = []

    def outcome(version: str) -> str:
        attempts.append(version)
        if len(attempts) < 3:
            raise KeyError("bug")
        return "deployed"

    deployer = FakeDeployer(state, outcome=outcome)

    with capture_logs("INFO") as logs:
        watcher(state, registry, deployer, time).run_forever(stop)

    errors = [entry for entry in logs if entry.level == "ERROR"]
    assert len(errors) == 1
    assert isinstance(errors[0].exception, KeyError)
    assert attempts == ["1.1.0", "1.1.0", "1.1.0"]
    assert state.current is not None and state.current.version == "1.1.0"


def test_a_failed_deploy_is_not_retried_on_the_next_poll(state):
    stop = threading.Event()
    time = FakeTime(stop, sleeps=4)
    tags = ["1.0.0"]
    state.set_current(Release("1.0.0"))
    registry = FakeRegistry(lambda: tags)
    deployer = FakeDeployer(state, outcome=lambda version: "rolled_back" if version == "1.1.0" else "deployed")

    def sleep(seconds: float) -> None:
        time.sleep(seconds)
        tags.append(["1.1.0", "1.1.0", "1.2.0", "1.2.0"][len(time.waits) - 1])

    Watcher(
        single_target(settings()), registry, deployer, state, clock=time.clock, sleep=sleep, jitter=lambda: 0.0
    ).run_forever(stop)

    assert [version for version, _ in deployer.deployed] == ["1.1.0", "1.2.0"]
    assert state.current is not None and state.current.version == "1.2.0"


def test_stop_while_backing_off_ends_the_loop(state):
    stop = threading.Event()
    time = FakeTime(stop, sleeps=1)
    registry = FakeRegistry(failing(100, RegistryUnavailable("down"), []))

    watcher(state, registry, FakeDeployer(state), time).run_forever(stop)

    assert len(time.waits) == 1


def test_the_default_sleep_wakes_up_when_stopped(state):
    stop = threading.Event()
    registry = FakeRegistry(list)
    looping = Watcher(single_target(settings(CD_POLL_INTERVAL="3600")), registry, FakeDeployer(state), state)
    thread = threading.Thread(target=looping.run_forever, args=(stop,))
    thread.start()
    try:
        # the first poll records when the next one is due; then the loop waits an hour
        wait_for(lambda: state.next_poll_at is not None, timeout=10, what="first poll")
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_low_docker_hub_allowance_slows_polling_down(state):
    stop = threading.Event()
    time = FakeTime(stop, sleeps=2)
    registry = FakeRegistry(list, rate_limit=RateLimit(limit=100, remaining=5, window_seconds=21600))

    with capture_logs("INFO") as logs:
        watcher(state, registry, FakeDeployer(state), time).run_forever(stop)

    assert time.waits == [MAX_WAIT, MAX_WAIT]
    assert sum("5 of 100 pulls left" in entry.message for entry in logs) == 1


@pytest.mark.parametrize(
    ("rate_limit", "jitter", "expected"),
    [
        (None, 0.0, 60),
        (None, 1.0, 60 * (1 + JITTER)),
        (RateLimit(limit=100, remaining=50, window_seconds=21600), 0.0, 60),
        (RateLimit(limit=100, remaining=10, window_seconds=21600), 0.0, 60),  # at the threshold: still normal
        (RateLimit(limit=100, remaining=9, window_seconds=3600), 0.0, 400),  # 3600 s / 9 pulls
        (RateLimit(limit=100, remaining=0, window_seconds=21600), 0.0, MAX_WAIT),
        (RateLimit(limit=100, remaining=9, window_seconds=None), 0.0, 2400),  # Docker Hub's 6 h window / 9
        (RateLimit(limit=100, remaining=9, window_seconds=60), 0.0, 60),  # never faster than the interval
    ],
)
def test_poll_delay(rate_limit, jitter, expected):
    assert poll_delay(60, rate_limit, jitter) == pytest.approx(expected)


def test_deploys_that_fail_before_any_swap_are_retried_with_backoff(state):
    stop = threading.Event()
    time = FakeTime(stop, sleeps=5)
    registry = FakeRegistry(lambda: ["1.0.0"])
    outcomes = iter(["failed", "failed", "failed", "deployed"])
    deployer = FakeDeployer(state, outcome=lambda version: next(outcomes, "deployed"))
    deployer_deploy = deployer.deploy

    def deploy_without_quarantine(version: str, *, digest: str | None = None, force: bool = False) -> Report:
        report = deployer_deploy(version, digest=digest, force=force)
        state.release_quarantine(version)  # "failed" means nothing was swapped: no quarantine
        return report

    deployer.deploy = deploy_without_quarantine  # type: ignore[method-assign]

    watcher(state, registry, deployer, time).run_forever(stop)

    assert [version for version, _ in deployer.deployed] == ["1.0.0"] * 4
    assert time.waits == [120, 240, 480, 60, 60]


# The watcher's side of a deploy process (cd_agent.child_deploys), against stand-in children: small
# shell scripts run as the "python" of ChildDeploys, answering as cd_agent.deploy_child would.


def stand_in(tmp_path: Path, body: str) -> str:
    """An executable that reads the request from stdin (as the real child does), then runs ``body``."""
    script = tmp_path / "child.sh"
    script.write_text(f"#!/bin/sh\ncat > {tmp_path / 'request'}\n{body}\n")
    script.chmod(0o700)
    return str(script)


def test_a_deploy_process_s_answer_becomes_the_rollout_outcome(tmp_path):
    answer = '{"deploy": {"outcome": "rolled_back", "error": "health check failed"}, "unrunnable": null}'
    deploys = ChildDeploys(*app(), python=stand_in(tmp_path, f"echo 'log noise' >&2; echo '{answer}'"))

    outcome = deploys.roll_out("1.1.0", digest_of("1.1.0"), "1.0.0")

    assert outcome == RolloutOutcome(ChildDeploy("rolled_back", "health check failed"), None)
    request = pickle.loads((tmp_path / "request").read_bytes())  # noqa: S301 - written by the test
    assert (request["job"], request["version"], request["digest"], request["deployed"]) == (
        "roll_out", "1.1.0", digest_of("1.1.0"), "1.0.0"
    )
    assert request["settings"] == settings()  # the watcher's own, not read again
    assert request["parent"] == os.getpid()


def test_a_registry_outage_in_the_deploy_process_is_retried_like_one_in_the_watcher(tmp_path):
    error = '{"error": {"type": "RateLimited", "message": "429 from the registry", "retry_after": 7.5}}'
    deploys = ChildDeploys(*app(), python=stand_in(tmp_path, f"echo '{error}'"))

    with pytest.raises(RateLimited, match="429 from the registry") as raised:
        deploys.roll_out("1.1.0", digest_of("1.1.0"), "1.0.0")

    assert raised.value.retry_after == 7.5


def test_any_other_error_keeps_its_message_and_exit_code(tmp_path):
    error = (
        '{"error": {"type": "DockerUnavailable", "message": "cannot reach the Docker Engine", "exit_code": 3,'
        ' "stage": "open"}}'
    )
    deploys = ChildDeploys(*app(), python=stand_in(tmp_path, f"echo '{error}'"))

    with pytest.raises(ChildError, match="cannot reach the Docker Engine") as raised:
        deploys.reconcile()

    assert (raised.value.exit_code, raised.value.stage) == (3, "open")


def test_a_killed_deploy_process_is_a_failed_deploy_then_a_reconcile(tmp_path):
    # The first start is the deploy, killed; the second the reconcile it calls for.
    calls = tmp_path / "calls"
    body = (
        f"echo started >> {calls}\n"
        f"if [ $(wc -l < {calls}) -eq 1 ]; then kill -KILL $$; fi\n"
        "echo '{\"done\": \"undid the interrupted deploy of 1.1.0\"}'"
    )
    deploys = ChildDeploys(*app(), python=stand_in(tmp_path, body))

    with capture_logs("INFO") as logs:
        outcome = deploys.roll_out("1.1.0", digest_of("1.1.0"), "1.0.0")

    assert outcome.deploy is not None and outcome.deploy.outcome == "failed"
    assert outcome.deploy.error == "the deploy process was killed by SIGKILL before it finished"
    assert calls.read_text().count("started") == 2
    said = [(entry.level, entry.message) for entry in logs]
    assert ("ERROR", "[app] deploy of 1.1.0 failed: the deploy process was killed by SIGKILL before it finished; "
            "reconciling") in said


def test_a_deploy_process_that_says_nothing_is_a_failed_deploy(tmp_path):
    deploys = ChildDeploys(*app(), python=stand_in(tmp_path, "echo 'not json'; exit 4"))

    outcome = deploys.roll_out("1.1.0", digest_of("1.1.0"), None)

    assert outcome.deploy is not None and outcome.deploy.outcome == "failed"
    assert outcome.deploy.error == "the deploy process exited with code 4 without an outcome"


def test_a_prepared_deploy_process_takes_the_next_request(tmp_path):
    """``prepare`` (on a hint) starts the child before a release is found; the deploy then goes to it."""
    starts = tmp_path / "starts"
    answer = '{"deploy": {"outcome": "deployed", "error": null}, "unrunnable": null}'
    script = tmp_path / "child.sh"
    script.write_text(f"#!/bin/sh\necho $$ >> {starts}\ncat > {tmp_path / 'request'}\necho '{answer}'\n")
    script.chmod(0o700)
    deploys = ChildDeploys(*app(), python=str(script))

    deploys.prepare()
    deploys.prepare()  # one is waiting already: no second
    wait_for(lambda: starts.exists() and starts.read_text(), timeout=10, what="the prepared child's start")
    outcome = deploys.roll_out("1.1.0", digest_of("1.1.0"), "1.0.0")

    assert outcome == RolloutOutcome(ChildDeploy("deployed", None), None)
    assert len(starts.read_text().split()) == 1  # the prepared child did it
    assert pickle.loads((tmp_path / "request").read_bytes())["version"] == "1.1.0"  # noqa: S301


def test_a_prepared_deploy_process_that_gave_up_waiting_is_replaced(tmp_path):
    """A spare exits with NO_JOB when no request comes; the request then goes to a new child."""
    starts = tmp_path / "starts"
    answer = '{"done": "nothing to reconcile"}'
    script = tmp_path / "child.sh"
    script.write_text(
        f"#!/bin/sh\necho $$ >> {starts}\n"
        f"if [ $(wc -l < {starts}) -eq 1 ]; then exit {NO_JOB}; fi\n"  # the spare: gives up at once
        f"cat > /dev/null\necho '{answer}'\n"
    )
    script.chmod(0o700)
    deploys = ChildDeploys(*app(), python=str(script))

    deploys.prepare()
    wait_for(lambda: starts.exists() and starts.read_text(), timeout=10, what="the prepared child's start")
    assert deploys.reconcile() == "nothing to reconcile"
    assert len(starts.read_text().split()) == 2


def test_the_watcher_and_the_deploy_process_agree_on_the_no_job_exit_code():
    assert NO_JOB == deploy_child.NO_JOB


def test_a_deploy_process_whose_request_never_comes_exits_having_done_nothing(tmp_path):
    """A spare the watcher let go (its stdin closed) ends with NO_JOB, without a word on stdout."""
    done = subprocess.run([sys.executable, "-m", "cd_agent.deploy_child"], input=b"", capture_output=True,
                          cwd=tmp_path, timeout=120, check=False)
    assert (done.returncode, done.stdout) == (NO_JOB, b""), done.stderr[-2000:]
