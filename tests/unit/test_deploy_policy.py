"""The whole deploy policy (deploy, rollback, quarantine, crash recovery) against the in-memory engine.

The deployer is the real one, with the real state and run databases in a temporary directory and a
recording mailer; only the container engine is ``tests/support/fake_engine.py`` and the clock is
fake, so each path runs in milliseconds. tests/integration/test_deployer*.py prove the same policy
against dockerd for the paths where the engine's behaviour matters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cd_agent.apps import AppPaths, single_target
from cd_agent.container_spec import LABEL_MANAGED, LABEL_VERSION
from cd_agent.deployer import Deployer
from cd_agent.engine import NetworkAttachment, ProcessConfig
from cd_agent.errors import DeployError, DockerUnavailable, EngineError, NothingToDeploy
from cd_agent.settings import CdSettings
from cd_agent.state import SWAP_PHASES, DeployState, Phase, Release
from shared.notify import Email, Notifier
from shared.runstore import RunStore
from shared.settings import load_settings
from shared.testing import RecordingMailer
from tests.support.fake_engine import Behaviour, FakeEngine

REPO = "127.0.0.1:5000/o/app"
NAME = "app"
OTHER = "127.0.0.1:5000/o/other"


class Killed(BaseException):
    """The agent SIGKILLed: nothing after it runs (not an Exception, so no handler catches it)."""


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.engine = FakeEngine()
        self.mailer = RecordingMailer()
        self.time = FakeTime()
        self.opened: list[Deployer] = []
        self.siblings: tuple[AppPaths, ...] = ()  # other apps of the same image

    def settings(self, **overrides: str) -> CdSettings:
        environ = {
            "CD_IMAGE": REPO, "CD_CONTAINER_NAME": NAME, "CD_PORTS": "127.0.0.1:8080:8080",
            "CD_VOLUMES": "data:/data", "CD_HEALTH_TIMEOUT": "8", "CD_HEALTH_GRACE": "1",
            "LOG_DIR": str(self.root / "logs"), "STATE_DIR": str(self.root / "state"), **overrides,
        }
        return load_settings(CdSettings, environ)

    def deployer(
        self,
        on_phase: Callable[[Phase], None] | None = None,
        probe: Callable[[str, float], tuple[bool, str]] = lambda url, timeout: (False, "no URL here"),
        **overrides: str,
    ) -> Deployer:
        target = single_target(self.settings(**overrides))
        deployer = Deployer(
            target, self.engine, DeployState(target.paths.state), RunStore(target.paths.runs),
            Notifier(self.mailer, attempts=1), monotonic=self.time.monotonic, sleep=self.time.sleep,
            probe=probe, on_phase=on_phase, siblings=self.siblings,
        )
        self.opened.append(deployer)
        return deployer

    def push(self, version: str, behaviour: Behaviour = "good", *, healthcheck: bool = False) -> str:
        return self.engine.push(REPO, version, behaviour, healthcheck=healthcheck)

    def serving(self) -> str | None:
        """The version the container called NAME serves: running, and not restarted by its policy."""
        info = self.engine.container(NAME)
        if info is None or not info.running or info.restart_count or info.health_status not in (None, "healthy"):
            return None
        return info.labels.get(LABEL_VERSION, info.image)

    def emails(self, deployer: Deployer) -> list[Email]:
        deployer.notifier.flush(5)
        return self.mailer.sent

    def close(self) -> None:
        for deployer in self.opened:
            deployer.notifier.close(5)
            deployer.state.close()
            deployer.runs.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    yield made
    made.close()


def deployed(world: World, *versions: str) -> Deployer:
    """A deployer after healthy deploys of ``versions``, in order."""
    deployer = world.deployer()
    for version in versions:
        if f"{REPO}:{version}" not in world.engine.registry:
            world.push(version)
        assert deployer.deploy(version).outcome == "deployed"
    return deployer


def kill_at(phase: Phase) -> Callable[[Phase], None]:
    def hook(reached: Phase) -> None:
        if reached == phase:
            raise Killed(phase)

    return hook


# upgrades


def test_a_first_deploy_runs_the_release_records_it_and_says_so(world: World) -> None:
    digest = world.push("1.0.0")
    deployer = world.deployer()

    report = deployer.deploy("1.0.0", digest=digest)

    assert (report.outcome, report.version, report.previous, report.run) == ("deployed", "1.0.0", None, 1)
    assert world.serving() == "1.0.0" and world.engine.names() == [NAME]
    current = deployer.state.current
    assert current is not None and (current.version, current.digest) == ("1.0.0", digest)
    assert deployer.state.journal is None
    run = deployer.runs.get(1)
    assert run is not None and run.status == "succeeded" and run.failed_step is None
    email = world.emails(deployer)[-1]
    assert email.subject == "[app] deployed 1.0.0"
    assert f"{REPO}:1.0.0 is running as {NAME}." in email.body and "Previous version: none" in email.body
    assert f"Digest: {digest}" in email.body and "Health: still running after 1s" in email.body


def test_an_upgrade_replaces_the_container_keeps_the_previous_image_and_prunes_older_ones(world: World) -> None:
    deployer = deployed(world, "0.9.0", "1.0.0", "1.1.0")
    world.push("1.2.0")

    report = deployer.deploy("1.2.0")

    assert (report.outcome, report.previous) == ("deployed", "1.1.0")
    assert report.downtime_s is not None and report.downtime_s >= 1  # the grace period, on the fake clock
    assert world.serving() == "1.2.0" and world.engine.names() == [NAME]
    previous = deployer.state.previous
    assert previous is not None and previous.version == "1.1.0"
    # CD_KEEP_IMAGES=3 (the default): the current release, the previous one and one more for a rollback
    assert sorted(world.engine.local) == [f"{REPO}:1.0.0", f"{REPO}:1.1.0", f"{REPO}:1.2.0"]
    # the anonymous /cache volume moved from container to container
    caches = {m.name for box in world.engine.boxes.values() for m in box.info.mounts if m.destination == "/cache"}
    assert len(caches) == 1


def test_pruning_keeps_the_image_another_app_of_the_same_image_runs(world: World) -> None:
    sibling = AppPaths(world.root / "state" / "apps" / "stable", world.root / "logs" / "stable")
    with DeployState(sibling.state) as state:
        state.set_current(Release("1.0.0"))
    world.siblings = (sibling,)
    deployer = world.deployer(CD_KEEP_IMAGES="2")
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        world.push(version)
        assert deployer.deploy(version).outcome == "deployed"

    # Alone, 1.0.0 would be pruned after 1.2.0 (CD_KEEP_IMAGES=2): the other app runs it.
    assert sorted(world.engine.local) == [f"{REPO}:{v}" for v in ("1.0.0", "1.1.0", "1.2.0")]


def test_cd_keep_images_keeps_the_newest_healthy_releases_and_prunes_a_quarantined_one(world: World) -> None:
    deployer = deployed(world, "1.0.0", "1.1.0", "1.2.0")
    deployer.state.quarantine("1.1.0", "rolled back by hand to 1.0.0")
    world.push("1.3.0")
    world.push("2.0.0")
    world.engine.local[f"{OTHER}:1.0.0"] = world.engine.registry[f"{REPO}:1.0.0"]  # another app's image

    assert deployer.deploy("1.3.0").outcome == "deployed"
    assert deployer.deploy("2.0.0").outcome == "deployed"

    # kept: 2.0.0 (current), 1.3.0 (previous), 1.2.0 (the newest healthy one before); 1.1.0 failed, 1.0.0 older
    assert sorted(ref for ref in world.engine.local if ref.startswith(REPO + ":")) == [
        f"{REPO}:1.2.0", f"{REPO}:1.3.0", f"{REPO}:2.0.0",
    ]
    assert f"{OTHER}:1.0.0" in world.engine.local  # never another app's image


def test_the_same_version_again_is_a_noop_unless_forced(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    container = world.engine.container(NAME)

    assert deployer.deploy("1.0.0").outcome == "noop"
    assert world.engine.container(NAME) == container

    assert deployer.deploy("1.0.0", force=True).outcome == "deployed"
    assert world.serving() == "1.0.0" and world.engine.container(NAME) != container


def test_a_foreign_container_is_adopted_as_the_previous_version(world: World) -> None:
    world.engine.run_foreign(NAME, "example/app:0.9.0")
    deployer = deployed(world, "1.0.0")

    previous = deployer.state.previous
    assert previous is not None and previous.version == "0.9.0"
    assert world.engine.names() == [NAME]
    assert world.engine.container(NAME) is not None


def test_a_failed_first_deploy_restores_the_adopted_container(world: World) -> None:
    foreign = world.engine.run_foreign(NAME, "example/app:latest")
    world.push("1.0.0", "exits")
    deployer = world.deployer()

    report = deployer.deploy("1.0.0")

    assert (report.outcome, report.previous) == ("rolled_back", "adopted")
    info = world.engine.container(NAME)
    assert info is not None and info.id == foreign and info.running and LABEL_MANAGED not in info.labels


# releases that fail


def test_a_release_that_exits_is_rolled_back_quarantined_and_reported_truthfully(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.0.1", "exits")

    report = deployer.deploy("1.0.1")

    assert (report.outcome, report.previous, report.failed_step, report.quarantined) == (
        "rolled_back", "1.0.0", "health", True
    )
    assert report.error is not None and "restart policy restarted it once" in report.error
    assert "exit code 0" not in report.error
    assert report.log_tail is not None and "cannot open /etc/app.conf" in report.log_tail
    assert world.serving() == "1.0.0" and world.engine.names() == [NAME]
    quarantine = deployer.state.quarantined["1.0.1"]
    assert quarantine.reason == f"health: {report.error}"
    current = deployer.state.current
    assert current is not None and current.version == "1.0.0"
    assert deployer.state.journal is None
    run = deployer.runs.get(report.run or 0)
    assert run is not None and (run.status, run.failed_step) == ("failed", "health")
    email = world.emails(deployer)[-1]
    assert email.subject == "[app] deploy of 1.0.1 failed: rolled back to 1.0.0"
    assert "Failed at health: the container exited" in email.body
    assert "The version is quarantined" in email.body and "cannot open /etc/app.conf" in email.body

    with pytest.raises(NothingToDeploy, match="1.0.1 is quarantined since .* deploy it with --force"):
        deployer.deploy("1.0.1")
    world.push("1.0.2")
    assert deployer.deploy("1.0.2").outcome == "deployed"


def test_without_a_restart_policy_the_exit_code_is_reported(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.0.1", "exits")
    deployer = world.deployer(CD_RESTART_POLICY="no")

    report = deployer.deploy("1.0.1")

    assert report.outcome == "rolled_back" and report.error == "the container exited with code 1"


def test_a_release_never_healthy_is_cut_at_the_timeout(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.1.0", "never_healthy")

    report = deployer.deploy("1.1.0")

    assert report.outcome == "rolled_back"
    assert report.error == "not healthy within 8s (health status starting)"
    assert deployer.state.is_quarantined("1.1.0") and world.serving() == "1.0.0"


def test_an_unhealthy_healthcheck_rolls_back_with_its_output_in_the_email(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.1.0", "unhealthy")

    report = deployer.deploy("1.1.0")

    assert report.outcome == "rolled_back" and report.health_output == "connection refused"
    assert "Health check output:\nconnection refused" in world.emails(deployer)[-1].body


def test_a_url_health_check_that_never_answers_rolls_back(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.1.0")

    def probe(url: str, timeout: float) -> tuple[bool, str]:
        # only 1.0.0 answers: as if 1.1.0 never listened
        serving = world.serving()
        return serving == "1.0.0", f"GET {url}: {'HTTP 200' if serving == '1.0.0' else 'ConnectError'}"

    deployer = world.deployer(probe=probe, CD_HEALTH_URL="http://127.0.0.1:8080/")

    report = deployer.deploy("1.1.0")

    assert report.outcome == "rolled_back", report
    assert report.error == "http://127.0.0.1:8080/ did not answer 2xx within 8s"
    assert report.health_output == "GET http://127.0.0.1:8080/: ConnectError"
    assert world.serving() == "1.0.0"


def test_a_start_the_engine_refuses_rolls_back_and_quarantines(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.1.0", "refuses_start")

    report = deployer.deploy("1.1.0")

    assert (report.outcome, report.failed_step, report.quarantined) == ("rolled_back", "start", True)
    assert report.error is not None and "port is already allocated" in report.error
    assert world.serving() == "1.0.0" and world.engine.names() == [NAME]


def test_an_engine_gone_at_start_rolls_back_without_quarantine(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.1.0")
    new_id = ""

    def away_at_start(operation: str, target: str) -> None:
        nonlocal new_id
        if operation == "start" and not new_id:
            new_id = target
            raise DockerUnavailable(f"docker start container {target}: cannot reach the Docker Engine")

    world.engine.before = away_at_start
    report = deployer.deploy("1.1.0")

    assert (report.outcome, report.failed_step, report.quarantined) == ("rolled_back", "start", False)
    assert not deployer.state.is_quarantined("1.1.0") and world.serving() == "1.0.0"


def test_a_create_the_engine_refuses_restores_the_old_container(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.1.0")

    def refuse_create(operation: str, target: str) -> None:
        if operation == "create":
            raise EngineError("docker create container app: invalid mount config (HTTP 400)", status=400)

    world.engine.before = refuse_create
    report = deployer.deploy("1.1.0")

    assert (report.outcome, report.failed_step, report.quarantined) == ("rolled_back", "create", False)
    assert report.downtime_s is None  # the old container was never stopped
    assert world.serving() == "1.0.0" and world.engine.names() == [NAME]


def test_a_version_missing_from_the_registry_fails_at_pull_without_touching_anything(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    before = world.engine.container(NAME)

    report = deployer.deploy("9.9.9")

    assert (report.outcome, report.failed_step, report.previous) == ("failed", "pull", "1.0.0")
    assert report.error is not None and "9.9.9" in report.error
    assert world.engine.container(NAME) == before and not deployer.state.is_quarantined("9.9.9")
    email = world.emails(deployer)[-1]
    assert email.subject == "[app] deploy of 9.9.9 failed" and email.body.startswith(f"pull {REPO}:9.9.9")


def test_a_broken_first_deploy_leaves_nothing_behind_and_is_quarantined(world: World) -> None:
    world.push("1.0.0", "exits")
    deployer = world.deployer()

    report = deployer.deploy("1.0.0")

    assert (report.outcome, report.quarantined) == ("failed", True)
    assert world.engine.names() == [] and deployer.state.current is None and deployer.state.journal is None


def test_when_restoring_fails_too_the_report_says_so_and_the_next_start_reconciles(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.1.0", "exits")

    def away_after_the_verdict(operation: str, target: str) -> None:
        if operation == "remove":
            raise DockerUnavailable("docker remove container: cannot reach the Docker Engine")

    world.engine.before = away_after_the_verdict
    report = deployer.deploy("1.1.0")

    assert (report.outcome, report.quarantined) == ("failed", False)
    assert report.error is not None and "and restoring the old container failed" in report.error
    assert deployer.state.journal is not None  # left for the next start
    assert "quarantined" not in world.emails(deployer)[-1].body

    world.engine.before = lambda operation, target: None
    said = world.deployer().reconcile()

    assert "undid the interrupted deploy of 1.1.0" in said
    assert world.serving() == "1.0.0" and world.engine.names() == [NAME]


# the outage: nothing but the engine's stop and start between the last answer of one and the first of the other


def _calls(world: World) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    world.engine.before = lambda operation, target: calls.append((operation, target))
    return calls


def _between(calls: list[tuple[str, str]], first: tuple[str, str], last: tuple[str, str]) -> list[tuple[str, str]]:
    start = calls.index(first)
    return calls[start + 1:calls.index(last, start)]


def test_an_upgrade_stops_the_old_container_and_starts_the_new_one_back_to_back(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    old = world.engine.container(NAME)
    world.push("1.1.0")
    calls = _calls(world)
    phases: list[Phase] = []
    deployer = world.deployer(on_phase=phases.append)

    assert deployer.deploy("1.1.0").outcome == "deployed"

    new = world.engine.container(NAME)
    assert old is not None and new is not None
    assert _between(calls, ("stop", old.id), ("start", new.id)) == []
    # the old container's name, the new one's creation and its journal entry all came before the stop
    assert calls.index(("rename", old.id)) < calls.index(("create", NAME)) < calls.index(("stop", old.id))
    assert phases == ["pulled", "old_renamed", "created", "old_stopped", "new_started", "verdict"]


def test_a_failed_release_is_stopped_and_the_old_one_started_back_to_back(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    old = world.engine.container(NAME)
    world.push("1.1.0", "exits")
    calls = _calls(world)

    report = deployer.deploy("1.1.0")

    assert report.outcome == "rolled_back" and world.serving() == "1.0.0" and world.engine.names() == [NAME]
    assert old is not None
    new_id = next(target for operation, target in calls if operation == "start" and target != old.id)
    assert _between(calls, ("stop", new_id), ("start", old.id)) == []
    # its log is read before it is removed, and the old one gets its name back after it serves
    assert report.log_tail is not None and "cannot open /etc/app.conf" in report.log_tail
    assert calls.index(("start", old.id)) < calls.index(("logs_tail", new_id)) < calls.index(("remove", new_id))
    assert calls.index(("remove", new_id)) < calls.index(("rename", old.id), calls.index(("start", old.id)))


def test_a_new_container_gone_before_the_rollback_does_not_stop_it(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.1.0", "never_healthy")

    def gone_before_the_stop(operation: str, target: str) -> None:
        box = world.engine.boxes.get(target)
        if operation == "stop" and box is not None and box.behaviour == "never_healthy":
            del world.engine.boxes[target]

    world.engine.before = gone_before_the_stop
    report = deployer.deploy("1.1.0")

    assert (report.outcome, report.quarantined) == ("rolled_back", True)
    assert world.serving() == "1.0.0" and world.engine.names() == [NAME]


# rollback and quarantine


def test_a_manual_rollback_returns_to_the_previous_version_and_quarantines_the_other(world: World) -> None:
    deployer = deployed(world, "1.0.0", "1.1.0")
    world.engine.registry.clear()  # the registry is down: the local image of 1.0.0 is used

    report = deployer.rollback()

    assert (report.outcome, report.version, report.previous) == ("deployed", "1.0.0", "1.1.0")
    assert world.serving() == "1.0.0"
    assert deployer.state.quarantined["1.1.0"].reason == "rolled back by hand to 1.0.0"
    assert world.emails(deployer)[-1].subject == "[app] rolled back to 1.0.0"


def test_rollback_without_a_previous_version_says_so(world: World) -> None:
    deployer = deployed(world, "1.0.0")

    with pytest.raises(NothingToDeploy, match="no previous version"):
        deployer.rollback()


def test_force_deploys_a_quarantined_version_and_releases_it(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.1.0")
    deployer.state.quarantine("1.1.0", "health: flaky")

    assert deployer.deploy("1.1.0", force=True).outcome == "deployed"
    assert not deployer.state.is_quarantined("1.1.0") and world.serving() == "1.1.0"


def test_one_deploy_at_a_time(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.1.0")
    other = world.deployer()
    refused: list[str] = []

    def deploy_meanwhile(operation: str, target: str) -> None:
        if operation == "pull" and not refused:
            with pytest.raises(DeployError, match="another deploy is in progress") as raised:
                other.deploy("1.1.0")
            refused.append(str(raised.value))

    world.engine.before = deploy_meanwhile
    assert deployer.deploy("1.1.0").outcome == "deployed"
    assert refused


def test_a_bad_env_file_fails_before_any_step(world: World) -> None:
    env_file = world.root / "app.env"
    env_file.write_text("GREETING=hello\n")
    deployer = deployed(world, "1.0.0")
    deployer = world.deployer(CD_ENV_FILE=str(env_file))
    world.push("1.1.0")
    env_file.write_bytes(b"GREETING=gr\xfc\xdfe\n")  # Latin-1, after the agent started
    before = world.engine.container(NAME)

    report = deployer.deploy("1.1.0")

    assert (report.outcome, report.failed_step, report.quarantined) == ("failed", "prepare", False)
    assert report.error is not None and "CD_ENV_FILE" in report.error and "UTF-8" in report.error
    assert world.engine.container(NAME) == before and deployer.state.journal is None
    run = deployer.runs.get(report.run or 0)
    assert run is not None and (run.status, run.failed_step) == ("failed", "prepare")


# crash recovery


@pytest.mark.parametrize("phase", [p for p in SWAP_PHASES if p != "verdict"])
def test_killed_before_the_verdict_the_old_version_comes_back(world: World, phase: Phase) -> None:
    deployed(world, "1.0.0")
    world.push("1.1.0")
    with pytest.raises(Killed):
        world.deployer(on_phase=kill_at(phase)).deploy("1.1.0")
    deployer = world.deployer()

    said = deployer.reconcile()

    # old_stopped is not journalled (it sits in the outage): the journal still says created
    journalled = "created" if phase == "old_stopped" else phase
    assert said.startswith("undid the interrupted deploy of 1.1.0") and f"reached {journalled!r}" in said
    assert world.serving() == "1.0.0" and world.engine.names() == [NAME]
    current = deployer.state.current
    info = world.engine.container(NAME)
    assert current is not None and info is not None and (current.version, current.container_id) == ("1.0.0", info.id)
    assert deployer.state.journal is None and not deployer.state.is_quarantined("1.1.0")
    assert deployer.runs.list(limit=1)[0].status == "interrupted"
    assert deployer.deploy("1.1.0").outcome == "deployed"


def test_a_journal_at_old_stopped_left_by_an_older_agent_is_undone(world: World) -> None:
    deployed(world, "1.0.0")
    world.push("1.1.0")
    with pytest.raises(Killed):
        world.deployer(on_phase=kill_at("old_stopped")).deploy("1.1.0")
    deployer = world.deployer()
    deployer.state.update_journal(phase="old_stopped")  # what agents before this one wrote there

    said = deployer.reconcile()

    assert said.startswith("undid the interrupted deploy of 1.1.0") and "reached 'old_stopped'" in said
    assert world.serving() == "1.0.0" and world.engine.names() == [NAME]


def test_killed_after_the_verdict_the_proven_version_stays(world: World) -> None:
    deployed(world, "1.0.0")
    world.push("1.1.0")
    with pytest.raises(Killed):
        world.deployer(on_phase=kill_at("verdict")).deploy("1.1.0")
    deployer = world.deployer()

    said = deployer.reconcile()

    assert said.startswith("finished the interrupted deploy of 1.1.0")
    assert world.serving() == "1.1.0" and world.engine.names() == [NAME]
    current, previous = deployer.state.current, deployer.state.previous
    assert current is not None and current.version == "1.1.0"
    assert previous is not None and previous.version == "1.0.0"


@pytest.mark.parametrize("phase", ["pulled", "created", "new_started", "verdict"])
def test_killed_during_a_first_deploy(world: World, phase: Phase) -> None:
    world.push("1.0.0")
    with pytest.raises(Killed):
        world.deployer(on_phase=kill_at(phase)).deploy("1.0.0")
    deployer = world.deployer()

    said = deployer.reconcile()

    if phase == "verdict":
        assert world.serving() == "1.0.0"
    else:
        assert "first deploy of 1.0.0" in said and world.engine.names() == []
        assert deployer.state.current is None
    assert deployer.deploy("1.0.0").outcome in ("deployed", "noop")


def test_killed_between_create_and_its_journal_entry_the_container_is_found_by_its_run_label(world: World) -> None:
    deployed(world, "1.0.0")
    world.push("1.1.0")

    def kill_after_create(operation: str, target: str) -> None:
        if operation == "container" and len(world.engine.boxes) == 2:
            raise Killed("after create")

    world.engine.before = kill_after_create
    with pytest.raises(Killed):
        world.deployer().deploy("1.1.0")
    world.engine.before = lambda operation, target: None

    said = world.deployer().reconcile()

    assert "undid" in said and world.serving() == "1.0.0" and world.engine.names() == [NAME]


def test_killed_while_pulling_the_run_is_marked_interrupted_before_the_next_deploy(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    world.push("1.1.0")

    def kill_in_pull(operation: str, target: str) -> None:
        if operation == "pull":
            raise Killed("pull")

    world.engine.before = kill_in_pull
    with pytest.raises(Killed):
        world.deployer().deploy("1.1.0")
    world.engine.before = lambda operation, target: None

    assert deployer.deploy("1.1.0").outcome == "deployed"
    statuses = [(run.version, run.status) for run in reversed(deployer.runs.list())]
    assert statuses == [("1.0.0", "succeeded"), ("1.1.0", "interrupted"), ("1.1.0", "succeeded")]


def test_reconcile_without_a_journal_makes_the_state_agree(world: World) -> None:
    deployer = deployed(world, "1.0.0")
    assert deployer.reconcile().startswith("state agrees with the containers")

    deployer.state.set_current(None)
    assert "state said nothing but app runs 1.0.0 (running): state updated" in deployer.reconcile()
    current = deployer.state.current
    assert current is not None and current.version == "1.0.0"

    world.engine.remove(NAME)
    assert deployer.reconcile() == f"no container named {NAME} although 1.0.0 was deployed; the next deploy starts one"


# stacks: what the user set up on the container is kept, or the deploy stops before touching it


def test_an_adopted_stack_container_keeps_its_networks_labels_and_run_options(world: World) -> None:
    world.engine.networks.add("shop_default")
    compose = {"com.docker.compose.project": "shop", "com.docker.compose.service": "web"}
    setup: dict[str, Any] = {
        "labels": compose,
        "process": ProcessConfig(cmd=("sh", "-c", "serve --db db")),
        "network_mode": "shop_default",
        "networks": (NetworkAttachment("shop_default", ("web",)),),
        "host_options": {"CapAdd": ["NET_ADMIN"], "Memory": 64 * 2**20},
    }
    world.engine.run_foreign(NAME, "example/app:0.9.0", **setup)

    deployed(world, "1.0.0", "1.0.1")

    info = world.engine.container(NAME)
    assert info is not None and info.labels[LABEL_VERSION] == "1.0.1"
    assert {key: info.labels[key] for key in compose} == compose
    assert (info.process, info.networks, info.host_options) == (
        setup["process"], setup["networks"], setup["host_options"]
    )


@pytest.mark.parametrize(
    ("setup", "overrides", "message"),
    [
        ({"network_mode": "container:" + "d" * 64}, {"CD_PORTS": ""},
         "shares the network of container dddddddddddd .*which is gone"),
        ({}, {"CD_NETWORKS": "shop_default:web"}, "network shop_default does not exist"),
    ],
)
def test_what_cannot_be_carried_fails_the_deploy_before_the_old_container_is_touched(
    world: World, setup: dict[str, str], overrides: dict[str, str], message: str
) -> None:
    foreign = world.engine.run_foreign(NAME, "example/app:0.9.0", **setup)
    world.push("1.0.0")
    deployer = world.deployer(None, lambda url, timeout: (False, "no URL here"), **overrides)
    operations: list[str] = []
    world.engine.before = lambda operation, target: operations.append(operation)

    report = deployer.deploy("1.0.0")

    assert (report.outcome, report.failed_step) == ("failed", "prepare")
    assert re.search(message, report.error or ""), report.error
    assert set(operations) <= {"pull", "image", "images", "container", "network"}  # looked, touched nothing
    info = world.engine.container(NAME)
    assert info is not None and info.id == foreign and info.running
    assert "1.0.0" not in deployer.state.quarantined_versions
