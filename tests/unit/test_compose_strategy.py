"""CD_STRATEGY=compose against the in-memory engine and a fake compose that acts on it.

``FakeCompose`` answers ``config`` with the user's file and, on ``up``, recreates the service's containers
(compose's labels, ``replicas`` of them) from the image the pin names, as compose does; the deployer, the
state, the runs and the pin file are the real ones. tests/integration/test_compose.py proves the same
against the real compose and dockerd.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cd_agent.apps import single_target
from cd_agent.compose import project_of, service_status
from cd_agent.compose_project import (
    LABEL_ONEOFF,
    LABEL_PROJECT,
    LABEL_SERVICE,
    ComposeError,
    ComposeProject,
    check_service,
    default_project,
    split_files,
)
from cd_agent.container_spec import ContainerSpec
from cd_agent.deployer import Deployer
from cd_agent.images import version_of
from cd_agent.settings import CdSettings
from cd_agent.state import DeployState, Phase
from shared.errors import SettingsError
from shared.notify import Notifier
from shared.runstore import RunStore
from shared.settings import load_settings
from shared.testing import RecordingMailer
from tests.support.fake_engine import FakeEngine

REPO = "127.0.0.1:5000/o/app"
USER_FILE = f"""version: "3.8"
services:
  db:
    image: postgres:16
  web:
    image: {REPO}:1.0.0
"""


class Killed(BaseException):
    """The agent SIGKILLed."""


class FakeCompose:
    """``config`` and ``up -d --no-deps SERVICE`` / ``rm -s -f SERVICE`` over a ``FakeEngine``."""

    def __init__(self, engine: FakeEngine, text: str = USER_FILE, replicas: int = 2) -> None:
        self.engine = engine
        self.text = text
        self.replicas = replicas
        self.refuse_up: set[str] = set()
        self.commands: list[list[str]] = []

    def run(self, args: Sequence[str], *, cwd: Path, timeout: float) -> str:
        args = list(args)
        self.commands.append(args)
        project = args[args.index("-p") + 1]
        files = [args[i + 1] for i, arg in enumerate(args) if arg == "-f"]
        merged = yaml.safe_load(self.text)
        for extra in files[1:]:
            for name, entry in yaml.safe_load(Path(extra).read_text())["services"].items():
                merged["services"][name].update(entry)
        verb = next(arg for arg in args if arg in ("config", "up", "rm"))
        if verb == "config":
            return yaml.safe_dump(merged)
        service = args[-1]
        for box in list(self.engine.boxes.values()):
            if box.info.labels.get(LABEL_PROJECT) == project and box.info.labels.get(LABEL_SERVICE) == service:
                self.engine.remove(box.info.id)
        if verb == "rm":
            return ""
        image = merged["services"][service]["image"].split("@")[0]
        if image in self.refuse_up:
            raise ComposeError(f"compose up: Error response from daemon: cannot start {image}")
        labels = {LABEL_PROJECT: project, LABEL_SERVICE: service, LABEL_ONEOFF: "False"}
        for number in range(1, self.replicas + 1):
            spec = ContainerSpec(name=f"{project}-{service}-{number}", image=image, labels=labels)
            self.engine.start(self.engine.create(spec))
        return ""


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.engine = FakeEngine()
        self.compose = FakeCompose(self.engine)
        self.mailer = RecordingMailer()
        self.now = 100.0
        self.file = root / "stack" / "compose.yml"
        self.file.parent.mkdir()
        self.file.write_text(USER_FILE)
        self.engine.push(REPO, "1.0.0", healthcheck=True)
        self.engine.pull(REPO, "1.0.0")
        self.compose.run(["-p", "stack", "-f", str(self.file), "up", "-d", "web"], cwd=root, timeout=1)

    def deployer(self, on_phase: object = None) -> Deployer:
        settings = load_settings(CdSettings, {
            "CD_IMAGE": REPO, "CD_CONTAINER_NAME": "web", "CD_HEALTH_TIMEOUT": "8", "CD_HEALTH_GRACE": "1",
            "LOG_DIR": str(self.root / "logs"), "STATE_DIR": str(self.root / "state"),
        })
        target = replace(single_target(settings), strategy="compose", compose_files=(self.file,),
                         compose_service="web", compose_project="stack")
        return Deployer(
            target, self.engine, DeployState(target.paths.state), RunStore(target.paths.runs),
            Notifier(self.mailer, attempts=1), monotonic=self.monotonic, sleep=self.sleep,
            compose=self.compose, on_phase=on_phase,  # type: ignore[arg-type]
        )

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    @property
    def pin(self) -> Path:
        return self.root / "state" / "compose-pin.yml"

    def web(self) -> list[str]:
        """The image of each container of the service."""
        found = self.engine.containers(label=f"{LABEL_PROJECT}=stack")
        return sorted(c.image for c in found if c.labels[LABEL_SERVICE] == "web")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_release_is_pinned_and_every_replica_recreated_from_it(world: World) -> None:
    digest = world.engine.push(REPO, "1.1.0", healthcheck=True)
    report = world.deployer().deploy("1.1.0")
    assert report.outcome == "deployed" and report.previous == "1.0.0", report
    assert world.web() == [f"{REPO}:1.1.0", f"{REPO}:1.1.0"]
    assert yaml.safe_load(world.pin.read_text()) == {
        "version": "3.8", "services": {"web": {"image": f"{REPO}:1.1.0@{digest}"}},
    }
    assert stat.S_IMODE(world.pin.stat().st_mode) == 0o600
    status = service_status(world.engine, project_of(world.deployer().target))
    assert status["replicas"] == 2 and status["version"] == "1.1.0", status
    assert [task["version"] for task in status["tasks"]] == ["1.1.0", "1.1.0"]
    assert all(command[-1] == "web" for command in world.compose.commands if "up" in command)
    assert all("--no-deps" in command for command in world.compose.commands[1:] if "up" in command)


def test_an_unhealthy_release_rolls_the_service_back_to_the_previous_pin(world: World) -> None:
    world.engine.push(REPO, "1.1.0", healthcheck=True)
    deployer = world.deployer()
    assert deployer.deploy("1.1.0").outcome == "deployed"
    pinned = world.pin.read_text()
    world.engine.push(REPO, "1.2.0", "unhealthy")
    report = deployer.deploy("1.2.0")
    assert report.outcome == "rolled_back" and report.previous == "1.1.0" and report.quarantined, report
    assert report.error is not None and "stack-web-1" in report.error
    assert world.pin.read_text() == pinned
    assert world.web() == [f"{REPO}:1.1.0", f"{REPO}:1.1.0"]
    assert deployer.state.is_quarantined("1.2.0")
    assert deployer.state.journal is None
    deployer.notifier.flush(10)
    assert "rolled back to 1.1.0" in world.mailer.sent[-1].subject


def test_a_failed_first_deploy_removes_the_pin_and_the_compose_files_image_serves_again(world: World) -> None:
    world.engine.push(REPO, "1.1.0", "exits")
    report = world.deployer().deploy("1.1.0")
    assert report.outcome == "rolled_back" and report.previous == "1.0.0", report
    assert not world.pin.exists()
    assert world.web() == [f"{REPO}:1.0.0", f"{REPO}:1.0.0"]


def test_compose_refusing_up_is_the_releases_fault_and_rolled_back(world: World) -> None:
    world.engine.push(REPO, "1.1.0")
    world.compose.refuse_up.add(f"{REPO}:1.1.0")
    report = world.deployer().deploy("1.1.0")
    assert report.outcome == "rolled_back" and report.failed_step == "up" and report.quarantined, report
    assert "cannot start" in (report.error or "")
    assert world.web() == [f"{REPO}:1.0.0", f"{REPO}:1.0.0"]


@pytest.mark.parametrize(("phase", "serving"), [("pulled", "1.0.0"), ("created", "1.0.0"), ("verdict", "1.1.0")])
def test_a_deploy_killed_at_a_phase_is_finished_or_undone_at_the_next_start(
    world: World, phase: Phase, serving: str
) -> None:
    world.engine.push(REPO, "1.1.0", healthcheck=True)

    def kill(reached: Phase) -> None:
        if reached == phase:
            raise Killed

    killed = world.deployer(on_phase=kill)
    with pytest.raises(Killed):
        killed.deploy("1.1.0")
    killed.state.close()
    killed.runs.close()

    deployer = world.deployer()
    said = deployer.reconcile()
    assert world.web() == [f"{REPO}:{serving}"] * 2, said
    current = deployer.state.current
    assert current is not None and current.version == serving, said
    assert deployer.state.journal is None
    run = deployer.runs.get(1)
    assert run is not None and run.status == "interrupted"


def test_split_files_and_the_default_project(tmp_path: Path) -> None:
    folder = tmp_path / "My Stack_1.x"
    folder.mkdir()
    first, second = folder / "a.yml", folder / "b.yml"
    first.write_text("services: {}\n")
    second.write_text("services: {}\n")
    assert split_files(f"{first}, {second}") == (first, second)
    assert default_project(first) == "mystack_1x"
    (folder / ".env").write_text("TAG=1\nCOMPOSE_PROJECT_NAME=Shop\n")
    assert default_project(first) == "shop"
    for bad, said in ((f"{first},", "comma-separated"), (" ", "comma-separated"), (str(folder / "c.yml"), "no such")):
        with pytest.raises(ValueError, match=said):
            split_files(bad)


class ConfigOnly:
    def __init__(self, text: str) -> None:
        self.text = text

    def run(self, args: Sequence[str], *, cwd: Path, timeout: float) -> str:
        if self.text.startswith("ERROR"):
            raise ComposeError(self.text)
        return self.text


@pytest.mark.parametrize(("text", "said"), [
    ("services:\n  db: {image: postgres}\n", "no service 'web' (its services: db)"),
    ("services:\n  web: {build: .}\n", "service 'web' has no image:"),
    ("services:\n  web: {image: other/app:1}\n", "runs image other/app:1, not CD_IMAGE"),
    ("ERROR: yaml.scanner.ScannerError", "compose does not accept the files"),
])
def test_bad_compose_input_is_named(tmp_path: Path, text: str, said: str) -> None:
    project = ComposeProject((tmp_path / "compose.yml",), "web", "p", tmp_path / "pin.yml")
    with pytest.raises(ValueError, match=said.replace("(", r"\(").replace(")", r"\)")):
        check_service(project, REPO, ConfigOnly(text))


@pytest.mark.parametrize("image", [f"{REPO}:1.0.0", f"{REPO}:latest", f"{REPO}@sha256:ab", f"{REPO}"])
def test_the_services_image_may_name_the_repository_any_way(tmp_path: Path, image: str) -> None:
    project = ComposeProject((tmp_path / "compose.yml",), "web", "p", tmp_path / "pin.yml")
    check_service(project, REPO, ConfigOnly(f"services:\n  web: {{image: '{image}'}}\n"))
    check_service(project, "docker.io/library/app", ConfigOnly("services:\n  web: {image: 'app:1'}\n"))


@pytest.mark.parametrize(("settings", "said"), [
    ({}, "CD_COMPOSE_FILE is required but not set"),
    ({"CD_COMPOSE_FILE": "/nonexistent/compose.yml"}, "CD_COMPOSE_FILE='/nonexistent/compose.yml': no such compose"),
    ({"CD_COMPOSE_FILE": "a.yml,,b.yml"}, "CD_COMPOSE_FILE='a.yml,,b.yml': give one or more compose files"),
    ({"CD_COMPOSE_PROJECT": "My Stack"}, "CD_COMPOSE_PROJECT='My Stack': a compose project name is lower-case"),
    ({"CD_COMPOSE_SERVICE": "-web"}, "CD_COMPOSE_SERVICE='-web': a service name is"),
])
def test_compose_settings_are_refused_before_compose_runs(settings: dict[str, str], said: str) -> None:
    environ = {"CD_IMAGE": REPO, "CD_CONTAINER_NAME": "web", "CD_STRATEGY": "compose", **settings}
    with pytest.raises(SettingsError, match=re.escape(said)):
        load_settings(CdSettings, environ)


def test_version_of_a_pin() -> None:
    assert version_of(f"{REPO}:1.2.3@sha256:ab") == "1.2.3"
    assert version_of(f"{REPO}:latest") == "adopted"
    assert version_of(REPO) is None
