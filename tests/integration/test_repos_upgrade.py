"""A state folder made by the ci-agent of before CI_REPOS_FILE (tests/fixtures/state-before-repos) still works.

Without a repos file the environment is one repository: the old runs become that repository's, the
queued run is still taken, run numbers go on, and paths, URLs and the badge stay where they were.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from ci_agent.agent import open_agent
from ci_agent.queue import KIND
from ci_agent.settings import CiSettings
from ci_agent.targets import load_targets
from shared.runstore import RunStore
from shared.settings import load_settings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

FIXTURE = Path(__file__).parents[1] / "fixtures" / "state-before-repos" / "state"


def test_a_state_folder_of_before_keeps_its_runs_numbers_paths_and_badge(tmp_path):
    state = tmp_path / "state"
    shutil.copytree(FIXTURE, state)
    (state / "runs.sqlite3").chmod(0o600)
    env = {
        "CI_REPO_URL": "https://github.com/Codertocat/Hello-World.git",
        "CI_GITHUB_REPO": "Codertocat/Hello-World",
        "CI_IMAGE": "127.0.0.1:5000/codertocat/hello-world",
        "CI_WEBHOOK_SECRET": "whsec-upgrade-never-shown",
        "LOG_DIR": str(tmp_path / "logs"),
        "STATE_DIR": str(state),
    }
    settings = load_settings(CiSettings, env)
    targets = load_targets(settings, env)
    target = targets.first
    assert target.name == "hello-world"
    assert target.paths.revisions_file == state / "release-revisions.json"
    assert target.paths.log_dir == tmp_path / "logs"
    with open_agent(settings, targets, env) as agent:
        agent.recover()
        runs = {run.number: run for run in agent.store.list()}
        assert {n: (r.status, r.scope) for n, r in runs.items()} == {
            1: ("succeeded", "hello-world"), 2: ("failed", "hello-world"), 3: ("queued", "hello-world"),
        }
        taken = agent.queue.take(timeout=1)
        assert taken is not None and taken[0].number == 3
        assert agent.targets.for_run(taken[0]) is target
        assert taken[1].after == "c" * 40
        new = agent.store.create(kind=KIND, commit="d" * 40, ref="refs/heads/main", scope=target.name)
        assert new.number == 4

        dashboard = TestClient(agent.dashboard(), base_url="http://127.0.0.1")  # a loopback name (host check)
        assert [run["number"] for run in dashboard.get("/runs").json()] == [4, 3, 2, 1]
        assert dashboard.get("/runs/1").json()["repo"] == "hello-world"
        assert dashboard.get("/runs", params={"repo": "hello-world"}).status_code == 200
        badge = TestClient(agent.app()).get("/badge.svg")
        assert badge.status_code == 200
        assert "failing" in badge.text and "0.1.0" in badge.text
        assert TestClient(agent.app()).get("/badge/hello-world.svg").text == badge.text

    # The migration happened once, in place; opening again changes nothing.
    with RunStore(state / "runs.sqlite3") as store:
        assert {run.scope for run in store.list()} == {"hello-world"}


def test_the_environment_repository_keeps_its_history_when_its_name_changes(tmp_path):
    env = {
        "CI_REPO_URL": "https://github.com/Codertocat/Hello-World.git",
        "CI_IMAGE": "127.0.0.1:5000/codertocat/hello-world",
        "CI_ALLOW_UNSIGNED": "true",
        "LOG_DIR": str(tmp_path / "logs"),
        "STATE_DIR": str(tmp_path / "state"),
    }
    settings = load_settings(CiSettings, env)
    with open_agent(settings, load_targets(settings, env), env) as agent:
        queued = agent.store.create(kind=KIND, commit="e" * 40, ref="refs/heads/main", scope="hello-world")
    renamed = {**env, "CI_GITHUB_REPO": "Codertocat/Renamed"}
    settings = load_settings(CiSettings, renamed)
    targets = load_targets(settings, renamed)
    with open_agent(settings, targets, renamed) as agent:
        run = agent.store.get(queued.number)
        assert run is not None and run.scope == "renamed"
        assert agent.targets.for_run(run) is targets.first
