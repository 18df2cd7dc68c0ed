"""What `ci-agent run` does not do: ask the remote twice for the same ref, or load the web stack.

Real git (a bare repository), real dockerd and registry; the git runner only counts the commands it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ci_agent.builder import DockerGateway
from ci_agent.git import GitRunner
from ci_agent.payload import ZERO_SHA, PushEvent
from ci_agent.pipeline import Pipeline
from ci_agent.settings import CiSettings
from ci_agent.targets import env_target
from shared.notify import Notifier
from shared.registry import RegistryClient, parse_image_ref
from shared.runstore import Run, RunStore
from shared.testing import RecordingMailer
from tests.support.docker_env import DockerJanitor, unique
from tests.support.git_repos import GitProject
from tests.support.registry_server import RegistryServer

REPO = Path(__file__).resolve().parents[2]


class CountingGit(GitRunner):
    """A real GitRunner that remembers the subcommand of every git it runs."""

    def __init__(self) -> None:
        super().__init__(timeout=60)
        self.commands: list[str] = []

    def _run(
        self, args: Sequence[str], *, cwd: Path | None, what: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        self.commands.append(args[0])
        return super()._run(args, cwd=cwd, what=what, env=env)


@pytest.fixture
def pipeline(
    tmp_path: Path, git_project: GitProject, registry: RegistryServer, docker_client: Any,
    docker_janitor: DockerJanitor,
) -> Iterator[tuple[Pipeline, CountingGit, RunStore]]:
    image = f"{registry.host}/{unique('roundtrips')}/app"
    settings = CiSettings(
        ci_repo_url=git_project.url, ci_image=image, ci_allow_unsigned=True, ci_test_runner="host",
        ci_test_command="grep -q hello www/index.html", ci_push_attempts=1, log_dir=tmp_path / "logs",
        state_dir=tmp_path / "state",
    )
    store = RunStore(tmp_path / "runs.db")
    notifier = Notifier(RecordingMailer(), attempts=1)
    registry_client = RegistryClient(parse_image_ref(image))
    git = CountingGit()
    docker_janitor.images.update(f"{image}:{tag}" for tag in ("latest", "0.1.0", "0.1.1", "1.0.0"))
    pipeline = Pipeline(env_target(settings), store, notifier, git, DockerGateway(docker_client), registry_client)
    yield pipeline, git, store
    notifier.close(timeout=5)
    registry_client.close()
    store.close()


def execute(pipeline: Pipeline, store: RunStore, event: PushEvent) -> Run:
    run = store.create(kind="ci", commit=event.after, ref=event.ref, details={"event": event.to_details()})
    return pipeline.execute(run, event)


def test_a_run_of_a_looked_up_ref_asks_the_remote_once(
    pipeline: tuple[Pipeline, CountingGit, RunStore], git_project: GitProject
) -> None:
    agent, git, store = pipeline
    git_project.commit_sample()

    run = execute(agent, store, agent.event_for_ref("main"))

    assert (run.status, run.version) == ("succeeded", "0.1.0"), run.error
    assert git.commands.count("ls-remote") == 1

    # A tag: branch and tag looked up in one round trip, and the release guard takes that answer.
    git_project.commit({"www/index.html": "<p>hello 1.0</p>\n"}, "release")
    git_project.push()
    git_project.tag("v1.0.0", message="one point oh")
    git.commands.clear()

    run = execute(agent, store, agent.event_for_ref("v1.0.0"))

    assert (run.status, run.version) == ("succeeded", "1.0.0"), run.error
    assert git.commands.count("ls-remote") == 1


def test_a_delivered_push_is_still_checked_against_the_remote(
    pipeline: tuple[Pipeline, CountingGit, RunStore], git_project: GitProject
) -> None:
    agent, git, store = pipeline
    old = git_project.commit_sample()
    agent.event_for_ref("main")  # a lookup for another run must not stand in for this one's check
    new = git_project.commit({"www/index.html": "<p>hello again</p>\n"}, "fix: wording")
    git_project.push()
    git.commands.clear()
    replayed = PushEvent(
        ref="refs/heads/main", branch="main", tag=None, after=new, before=old, deleted=False, repository="o/app",
    )

    run = execute(agent, store, replayed)

    assert (run.status, run.version) == ("succeeded", "0.1.0"), run.error
    assert git.commands.count("ls-remote") == 1  # the guard's own look at the branch
    stale = PushEvent(
        ref="refs/heads/main", branch="main", tag=None, after=old, before=ZERO_SHA, deleted=False, repository="o/app",
    )
    assert execute(agent, store, stale).status == "superseded"


def test_ci_agent_run_does_not_load_the_web_stack(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from ci_agent.cli import open_pipeline\n"
        "from ci_agent.settings import CiSettings\n"
        "from ci_agent.targets import load_targets\n"
        "from shared.settings import load_settings, read_environment\n"
        "settings = load_settings(CiSettings, read_environment(None))\n"
        "with open_pipeline(settings, load_targets(settings, {})):\n"
        "    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'uvicorn', 'click'}))\n"
    )
    environ = {
        key: value for key, value in os.environ.items() if not key.startswith(("CI_", "STATE_DIR", "LOG_DIR"))
    } | {
        "CI_REPO_URL": "file:///nowhere.git", "CI_IMAGE": "127.0.0.1:5000/o/app", "CI_ALLOW_UNSIGNED": "true",
        "STATE_DIR": str(tmp_path / "state"), "LOG_DIR": str(tmp_path / "logs"),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=REPO, env=environ
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().replace("'", '"')) == []
