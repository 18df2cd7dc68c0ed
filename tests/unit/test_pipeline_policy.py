"""Pipeline and release guard over in-memory fakes (tests/support/fake_ci.py): every path of a run, no Docker.

Each test drives ``Pipeline.execute`` with a real RunStore and notifier (a recording mailer) and
asserts on what a user sees: the run's status, step and version, the registry's tags, the email.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from ci_agent.effects import OutputSink
from ci_agent.payload import ZERO_SHA, PushEvent
from ci_agent.pipeline import Pipeline
from ci_agent.queue import KIND
from ci_agent.settings import CiSettings
from ci_agent.targets import RepoTarget, env_target
from shared.notify import Notifier
from shared.runstore import Run, RunStore
from shared.testing import RecordingMailer
from tests.support.fake_ci import FakeBuilder, FakeRegistry, FakeSource

IMAGE = "127.0.0.1:5000/me/web"
SECRET = "whsec-policy-Pq4-never-shown"


@dataclass
class World:
    target: RepoTarget
    store: RunStore
    mailer: RecordingMailer
    notifier: Notifier
    source: FakeSource
    registry: FakeRegistry
    builder: FakeBuilder
    host_calls: list[dict[str, Any]]
    host_exit: int = 0

    def pipeline(self) -> Pipeline:
        return Pipeline(
            self.target, self.store, self.notifier, self.source, self.builder, self.registry,
            push_retry_wait=0.0, host_runner=self.host_runner, keep_logs=50,
        )

    def host_runner(
        self, argv: Sequence[str], *, cwd: Path, timeout: float, on_output: OutputSink = print,
        env: Mapping[str, str] | None = None,
    ) -> int:
        self.host_calls.append({"argv": list(argv), "cwd": cwd, "env": dict(env or {})})
        on_output("host tests ran")
        return self.host_exit

    def push(self, sha: str, ref: str = "refs/heads/main", *, delivery: str | None = None) -> Run:
        event = self.event(sha, ref)
        run = self.store.create(kind=KIND, commit=sha, ref=ref, delivery_id=delivery,
                                details={"event": event.to_details()}, scope=self.target.name)
        return run

    def event(self, sha: str, ref: str = "refs/heads/main") -> PushEvent:
        tag = ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else None
        return PushEvent(ref=ref, branch=None if tag else ref.removeprefix("refs/heads/"), tag=tag, after=sha,
                         before=ZERO_SHA, deleted=False, repository="me/web", pusher="octocat")

    def run(self, sha: str, ref: str = "refs/heads/main") -> Run:
        return self.pipeline().execute(self.push(sha, ref), self.event(sha, ref))

    def emails(self) -> list[Any]:
        self.notifier.close(timeout=5)
        return list(self.mailer.sent)


def make_world(tmp_path: Path, **settings: Any) -> Iterator[World]:
    values: dict[str, Any] = {
        "ci_repo_url": "https://github.com/me/web.git", "ci_image": IMAGE, "ci_github_repo": "me/web",
        "ci_webhook_secret": SECRET, "log_dir": tmp_path / "logs", "state_dir": tmp_path / "state",
        "ci_push_attempts": 2, **settings,
    }
    target = env_target(CiSettings(**values))
    mailer = RecordingMailer()
    registry = FakeRegistry()
    with RunStore(tmp_path / "runs.db") as store:
        notifier = Notifier(mailer, attempts=1)
        yield World(target, store, mailer, notifier, FakeSource(), registry, FakeBuilder(registry), [])
        notifier.close(timeout=5)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path)


def test_a_first_push_tests_builds_and_pushes_the_initial_version_with_labels(world: World) -> None:
    sha = world.source.commit("initial")
    run = world.run(sha)
    assert (run.status, run.version, run.failed_step, run.scope) == ("succeeded", "0.1.0", None, world.target.name)
    assert sorted(world.registry.tags) == ["0.1.0", "latest"]
    labels = world.registry.tags["0.1.0"]
    assert labels["org.opencontainers.image.revision"] == sha
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    # The Dockerfile has a `test` stage: the tests ran in it, then the release was built.
    assert world.builder.builds[0] == ([f"{IMAGE}:ci-test"], "test")
    assert world.builder.tests == ["pytest -q"]
    assert f"{IMAGE}:0.1.0" not in world.builder.images  # the release tag is not kept locally
    log = Path(run.log_path or "").read_text()
    for step in ("checkout", "test", "build", "push"):
        assert f"step {step} finished" in log
    assert world.emails() == []


@pytest.mark.parametrize(("message", "version"), [("fix: typo", "0.1.1"), ("feat: page", "0.2.0"),
                                                  ("feat!: new api", "1.0.0")])
def test_the_next_version_follows_the_commits_since_the_last_release(
    world: World, message: str, version: str
) -> None:
    world.run(world.source.commit("initial"))
    run = world.run(world.source.commit(message))
    assert (run.status, run.version) == ("succeeded", version)


def test_a_failing_test_pushes_nothing_and_emails_the_step(world: World) -> None:
    world.builder.test_exit = 3
    run = world.run(world.source.commit("initial"))
    assert (run.status, run.failed_step) == ("failed", "test")
    assert "exited with code 3" in (run.error or "")
    assert world.registry.tags == {}
    [email] = world.emails()
    assert email.subject.startswith("CI run #1 failed at test: ")
    assert "tests exit 3" in email.body


def test_a_repository_of_a_repos_file_is_named_first_in_the_email(tmp_path: Path) -> None:
    for world in make_world(tmp_path):
        world.target = replace(world.target, name="web", from_file=True)
        world.builder.test_exit = 1
        run = world.run(world.source.commit("initial"))
        [email] = world.emails()
        assert email.subject.startswith(f"[web] run {run.number} failed at test: ")
        assert run.scope == "web"


def test_a_build_error_fails_the_step_that_built(world: World) -> None:
    world.builder.build_error = "no space left on device"
    world.builder.build_error_step = "build"
    run = world.run(world.source.commit("initial"))
    assert (run.status, run.failed_step, run.error) == ("failed", "build", "no space left on device")
    assert world.builder.tests == ["pytest -q"]  # the tests passed before
    assert world.registry.tags == {}
    world.builder.build_error_step = "test"  # the test stage's build
    failed = world.run(world.source.commit("fix: again"))
    assert (failed.status, failed.failed_step) == ("failed", "test")
    assert world.builder.tests == ["pytest -q"]


def test_a_push_is_retried_then_fails_the_run_without_a_tag(world: World) -> None:
    world.builder.push_failures = 1  # CI_PUSH_ATTEMPTS=2: one failure is absorbed
    assert world.run(world.source.commit("initial")).version == "0.1.0"
    world.builder.push_failures = 5
    run = world.run(world.source.commit("fix: again"))
    assert (run.status, run.failed_step) == ("failed", "push")
    assert "0.1.1" not in world.registry.tags


def test_a_version_tag_releases_exactly_that_version_once(world: World) -> None:
    world.run(world.source.commit("initial"))
    sha = world.source.commit("fix: for 2.0")
    world.source.tag("v2.0.0", sha)
    run = world.run(sha, "refs/tags/v2.0.0")
    assert (run.status, run.version) == ("succeeded", "2.0.0")
    again = world.run(sha, "refs/tags/v2.0.0")
    assert (again.status, again.details["already_released"]) == ("superseded", "2.0.0")


def test_a_tag_that_moved_releases_nothing(world: World) -> None:
    first = world.source.commit("initial")
    world.source.tag("v1.0.0", world.source.commit("fix: later"))
    run = world.run(first, "refs/tags/v1.0.0")
    assert run.status == "superseded"
    assert "tag v1.0.0 points at" in run.details["reason"]
    assert world.builder.tests == []


def test_a_replayed_push_of_a_released_commit_releases_nothing_and_runs_no_test(world: World) -> None:
    sha = world.source.commit("initial")
    world.run(sha)
    tests_before = len(world.builder.tests)
    replay = world.run(sha)
    assert (replay.status, replay.details["already_released"]) == ("superseded", "0.1.0")
    assert len(world.builder.tests) == tests_before
    assert world.emails() == []


def test_a_commit_older_than_the_latest_release_is_never_released(world: World) -> None:
    old = world.source.commit("initial")
    world.run(world.source.commit("fix: newer"))
    run = world.run(old)
    assert run.status == "superseded"
    assert "older than release 0.1.0" in run.details["reason"]


def test_a_commit_a_force_push_replaced_is_not_released(world: World) -> None:
    base = world.source.commit("initial")
    gone = world.source.commit("fix: soon gone")
    world.source.force_branch("main", base)
    world.source.commit("fix: the replacement")
    run = world.run(gone)
    assert run.status == "superseded"
    assert "no longer on refs/heads/main" in run.details["reason"]


def test_a_queued_run_of_a_newer_commit_supersedes_the_run_and_the_older_queued_ones(world: World) -> None:
    first = world.source.commit("initial")
    middle = world.source.commit("fix: middle")
    newest = world.source.commit("fix: newest")
    run = world.push(first)
    queued_middle, queued_newest = world.push(middle), world.push(newest)
    done = world.pipeline().execute(run, world.event(first))
    assert (done.status, done.details["superseded_by"]) == ("superseded", queued_newest.number)
    assert world.store.get(queued_middle.number).status == "superseded"  # type: ignore[union-attr]
    assert world.store.get(queued_newest.number).status == "queued"  # type: ignore[union-attr]


def test_another_repositorys_queued_runs_never_supersede_this_one(world: World) -> None:
    first = world.source.commit("initial")
    newer = world.source.commit("fix: newer")
    run = world.push(first)
    world.store.create(kind=KIND, commit=newer, ref="refs/heads/main", scope="other-repo")
    done = world.pipeline().execute(run, world.event(first))
    assert (done.status, done.version) == ("succeeded", "0.1.0")


def test_the_host_runner_gets_the_checkout_and_no_secret(tmp_path: Path) -> None:
    os.environ["PI_CICD_POLICY_PROBE"] = SECRET
    try:
        for world in make_world(tmp_path, ci_test_runner="host", ci_test_command="sh tests/run.sh"):
            run = world.run(world.source.commit("initial"))
            assert (run.status, run.version) == ("succeeded", "0.1.0")
            [call] = world.host_calls
            assert call["argv"] == ["sh", "tests/run.sh"]
            assert call["cwd"] == world.target.paths.checkout_dir
            assert SECRET not in call["env"].values()
            assert world.builder.tests == []
            world.host_exit = 1
            failed = world.run(world.source.commit("fix: broken"))
            assert (failed.status, failed.failed_step) == ("failed", "test")
    finally:
        del os.environ["PI_CICD_POLICY_PROBE"]


def test_an_unexpected_error_in_a_step_is_a_failed_step_not_a_crash(world: World) -> None:
    def broken(*args: object, **kwargs: object) -> list[str]:
        raise RuntimeError("surprise")

    world.run(world.source.commit("initial"))
    world.registry.list_tags = broken  # type: ignore[method-assign]
    run = world.run(world.source.commit("fix: x"))
    assert (run.status, run.failed_step) == ("failed", "checkout")
    assert "unexpected error: RuntimeError: surprise" in (run.error or "")
