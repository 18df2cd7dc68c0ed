"""Whole CI runs against real git, dockerd, the registry and the run store; email through a recording mailer."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ci_agent.builder import DockerGateway
from ci_agent.git import GitRunner
from ci_agent.payload import ZERO_SHA, PushEvent
from ci_agent.pipeline import Pipeline
from ci_agent.queue import RunQueue
from ci_agent.settings import CiSettings
from ci_agent.targets import env_target
from ci_agent.worker import Worker
from shared.disk import DiskFloor, DiskReading, engine_free_space
from shared.notify import Notifier
from shared.registry import RegistryClient, parse_image_ref
from shared.runstore import Run, RunStore
from shared.testing import RecordingMailer
from tests.support.docker_env import DockerJanitor, unique
from tests.support.git_repos import SAMPLE_DOCKERFILE, GitProject, git
from tests.support.polling import wait_for
from tests.support.registry_server import RegistryServer

FAILING_TEST = '#!/bin/sh\necho "assertion failed: the page does not say goodbye"\nexit 1\n'
SLOW_TEST = "#!/bin/sh\necho starting the slow test\nsleep 60\n"


@dataclass
class Agent:
    """A pipeline wired like the agent wires it, plus what the tests look at."""

    pipeline: Pipeline
    store: RunStore
    mailer: RecordingMailer
    notifier: Notifier
    registry: RegistryClient
    settings: CiSettings

    def run(self, sha: str, *, ref: str = "refs/heads/main") -> Run:
        tag = ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else None
        event = PushEvent(
            ref=ref, branch=None if tag else ref.removeprefix("refs/heads/"), tag=tag, after=sha,
            before=ZERO_SHA, deleted=False, repository="owner/app",
        )
        run = self.store.create(kind="ci", commit=sha, ref=ref, details={"event": event.to_details()})
        return self.pipeline.execute(run, event)

    def tags(self) -> list[str]:
        return sorted(self.registry.list_tags())

    def emails(self) -> list[Any]:
        assert self.notifier.flush(timeout=10)
        return self.mailer.sent


@pytest.fixture
def make_agent(
    tmp_path: Path, git_project: GitProject, registry: RegistryServer, docker_client, docker_janitor: DockerJanitor
) -> Iterator[Any]:
    made: list[Agent] = []

    def make(**overrides: Any) -> Agent:
        image = f"{registry.host}/{unique('pipeline')}/app"
        values: dict[str, Any] = {
            "ci_repo_url": git_project.url,
            "ci_image": image,
            "ci_allow_unsigned": True,
            "ci_test_command": "sh /tests/run.sh",
            "ci_test_timeout": 60,
            "ci_push_attempts": 1,
            "log_dir": tmp_path / "logs",
            "state_dir": tmp_path / "state",
        }
        values.update(overrides)
        settings = CiSettings(**values)
        store = RunStore(tmp_path / f"runs-{len(made)}.db")
        mailer = RecordingMailer()
        notifier = Notifier(mailer, attempts=1)
        registry_client = RegistryClient(parse_image_ref(image))
        pipeline = Pipeline(
            env_target(settings), store, notifier, GitRunner(timeout=60), DockerGateway(docker_client), registry_client,
            push_retry_wait=0.1, keep_logs=settings.log_retention_runs,
        )
        docker_janitor.images.update(f"{image}:{tag}" for tag in ("latest", "ci-test", "0.1.0", "1.0.0"))
        # Exact names: a prefix scan would race with other tests removing their containers.
        docker_janitor.containers.update(f"pi-cicd-ci-test-{pipeline._instance}-run-{n}" for n in range(1, 6))
        agent = Agent(pipeline, store, mailer, notifier, registry_client, settings)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.notifier.close(timeout=5)
        agent.registry.close()
        agent.store.close()


def test_releases_initial_then_patch_then_minor_with_oci_labels_and_a_log_per_run(
    make_agent, git_project: GitProject, docker_client
):
    agent = make_agent()
    first = git_project.commit_sample()

    run = agent.run(first)

    assert (run.status, run.version, run.failed_step) == ("succeeded", "0.1.0", None)
    assert agent.tags() == ["0.1.0", "latest"]
    labels = agent.registry.image_labels("0.1.0")
    assert labels["org.opencontainers.image.revision"] == first
    assert labels["org.opencontainers.image.source"] == git_project.url
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels["org.opencontainers.image.created"])
    assert agent.registry.manifest_digest("latest") == agent.registry.manifest_digest("0.1.0")
    log_path = Path(run.log_path or "")
    assert log_path.parent == agent.settings.log_dir
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_run-0001\.log", log_path.name)
    log = log_path.read_text()
    for step in ("checkout", "test", "build", "push"):
        assert f"step {step} started" in log
        assert re.search(rf"step {step} finished in \d+\.\ds", log)
    assert "sample tests passed" in log
    # The release tag is not kept locally; `latest` is, for the next build's cache.
    assert not docker_client.images.list(name=agent.pipeline.image.with_tag("0.1.0"))

    second = git_project.commit({"www/index.html": "<p>hello again</p>\n"}, "fix: wording")
    git_project.push()
    assert agent.run(second).version == "0.1.1"

    third = git_project.commit({"www/new.html": "<p>hello new</p>\n"}, "feat: a new page")
    git_project.push()
    fourth = git_project.commit({"www/new.html": "<p>hello newer</p>\n"}, "docs: typo")
    git_project.push()
    run = agent.run(fourth)

    assert run.version == "0.2.0"
    assert third != fourth
    assert agent.tags() == ["0.1.0", "0.1.1", "0.2.0", "latest"]
    assert agent.registry.image_labels("latest")["org.opencontainers.image.revision"] == fourth
    assert agent.emails() == []


def test_a_failing_test_stops_the_run_pushes_nothing_and_sends_one_email(make_agent, git_project: GitProject):
    agent = make_agent()
    sha = git_project.commit_sample(test_script=FAILING_TEST)

    run = agent.run(sha)

    assert (run.status, run.failed_step, run.version) == ("failed", "test", None)
    assert "exited with code 1" in (run.error or "")
    assert agent.tags() == []
    emails = agent.emails()
    assert len(emails) == 1
    assert "failed at test" in emails[0].subject
    assert "Step:       test" in emails[0].body
    assert "assertion failed: the page does not say goodbye" in emails[0].body
    log = Path(run.log_path or "").read_text()
    assert "step build started" not in log
    assert "step push started" not in log


def test_a_test_over_its_time_limit_is_killed_and_fails_the_run(make_agent, git_project: GitProject, docker_client):
    agent = make_agent(ci_test_timeout=2)
    sha = git_project.commit_sample(test_script=SLOW_TEST)
    began = time.monotonic()

    run = agent.run(sha)

    assert (run.status, run.failed_step) == ("failed", "test")
    assert "did not finish within 2s" in (run.error or "")
    assert time.monotonic() - began < 40
    assert agent.tags() == []
    assert not docker_client.containers.list(all=True, filters={"name": f"pi-cicd-ci-test-{agent.pipeline._instance}"})


def test_host_runner_runs_the_command_in_the_checkout(make_agent, git_project: GitProject):
    agent = make_agent(ci_test_runner="host", ci_test_command="grep -q hello www/index.html")
    sha = git_project.commit_sample()

    run = agent.run(sha)

    assert (run.status, run.version, run.error) == ("succeeded", "0.1.0", None)


def test_a_git_tag_is_released_as_exactly_that_version_and_never_overwritten(make_agent, git_project: GitProject):
    agent = make_agent()
    git_project.commit_sample()
    sha = git_project.tag("v1.0.0", message="release")

    assert agent.run(sha, ref="refs/tags/v1.0.0").version == "1.0.0"
    # The same tag push again (a redelivery or a replay): released already, quietly.
    again = agent.run(sha, ref="refs/tags/v1.0.0")
    assert (again.status, again.failed_step, again.details.get("already_released")) == ("superseded", None, "1.0.0")
    # The tag moved to another commit: 1.0.0 exists and is never overwritten.
    moved = git_project.commit({"www/index.html": "<p>hello moved</p>\n"}, "fix: moved")
    git_project.push()
    git("tag", "--force", "-a", "v1.0.0", "-m", "moved", cwd=git_project.clone)
    git("push", "--quiet", "--force", "origin", "refs/tags/v1.0.0", cwd=git_project.clone)
    overwrite = agent.run(moved, ref="refs/tags/v1.0.0")

    assert (overwrite.status, overwrite.failed_step) == ("failed", "build")
    assert "never overwritten" in (overwrite.error or "")
    assert agent.tags() == ["1.0.0", "latest"]
    assert len(agent.emails()) == 1


def test_a_commit_missing_from_the_repository_fails_at_checkout(make_agent, git_project: GitProject):
    agent = make_agent()
    git_project.commit_sample()

    run = agent.run("3" * 40)

    assert (run.status, run.failed_step) == ("failed", "checkout")
    assert agent.tags() == []
    assert "failed at checkout" in agent.emails()[0].subject


def test_event_for_ref_resolves_branches_and_tags(make_agent, git_project: GitProject):
    agent = make_agent()
    sha = git_project.commit_sample()
    git_project.tag("v2.0.0")

    branch = agent.pipeline.event_for_ref(None)
    tag = agent.pipeline.event_for_ref("v2.0.0")

    assert (branch.after, branch.branch, branch.ref) == (sha, "main", "refs/heads/main")
    assert (tag.after, tag.tag, tag.release_version) == (sha, "v2.0.0", "2.0.0")


def test_the_worker_runs_queued_runs_one_at_a_time_with_unique_versions(make_agent, git_project: GitProject):
    agent = make_agent()
    queue = RunQueue(agent.store)
    first = git_project.commit_sample()
    second = git_project.commit({"www/b.html": "hello"}, "fix: b")
    git_project.push()
    for n, sha in enumerate((first, second)):
        git("tag", f"t{n}", sha, cwd=git_project.clone)
        git("push", "--quiet", "origin", f"refs/tags/t{n}", cwd=git_project.clone)
    runs = [
        queue.submit(
            PushEvent(ref=f"refs/tags/t{n}", branch=None, tag=f"t{n}", after=sha, before=ZERO_SHA, deleted=False,
                      repository="owner/app"),
            f"delivery-{n}",
        )
        for n, sha in enumerate((first, second))
    ]
    worker = Worker(queue, agent.pipeline, poll_interval=0.2)
    worker.start()
    try:
        wait_for(
            lambda: all((agent.store.get(run.number) or run).finished for run in runs),
            timeout=120, what="both runs to finish",
        )
    finally:
        queue.close()
        assert worker.stop(timeout=30)
    done = [agent.store.get(run.number) for run in runs]
    assert [(r.status if r else None) for r in done] == ["succeeded", "succeeded"]
    assert sorted(r.version or "" for r in done if r) == ["0.1.0", "0.1.1"]


class _Exploding:
    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.executed: list[int] = []

    def execute(self, run: Run, event: PushEvent) -> Run:
        self.executed.append(run.number)
        if len(self.executed) == 1:
            raise RuntimeError("log directory vanished")
        return self.store.update(run.number, status="succeeded")

    def fail(self, run: Run, message: str) -> Run:
        return self.store.update(run.number, status="failed", error=message)


def test_an_unexpected_error_fails_that_run_and_the_worker_goes_on(tmp_path: Path):
    store = RunStore(tmp_path / "runs.db")
    queue = RunQueue(store)
    event = PushEvent(ref="refs/heads/main", branch="main", tag=None, after="a" * 40, before=ZERO_SHA, deleted=False,
                      repository="owner/app")
    tag_event = PushEvent(ref="refs/tags/v1.0.0", branch=None, tag="v1.0.0", after="b" * 40, before=ZERO_SHA,
                          deleted=False, repository="owner/app")
    first = queue.submit(event, "d1")
    second = queue.submit(tag_event, "d2")
    executor = _Exploding(store)
    worker = Worker(queue, executor, poll_interval=0.1)
    worker.start()
    try:
        wait_for(lambda: (store.get(second.number) or first).status == "succeeded", timeout=10,
                 what="the second run to succeed")
        broken = store.get(first.number)
        assert broken is not None
        assert (broken.status, broken.error) == ("failed", "internal error: RuntimeError: log directory vanished")
        assert worker.running
    finally:
        queue.close()
        assert worker.stop(timeout=10)
        store.close()
    assert executor.executed == [first.number, second.number]


def test_build_args_reach_the_test_stage_and_the_release_build(make_agent, git_project: GitProject):
    agent = make_agent(ci_build_args="GREETING=hello-from-build-args")
    dockerfile = SAMPLE_DOCKERFILE.replace(
        "FROM base AS test\n", "FROM base AS test\nARG GREETING\nRUN echo \"$GREETING\" > /greeting\n"
    ).replace("FROM base\n", "FROM base\nARG GREETING\nLABEL greeting=$GREETING\n")
    git_project.commit_sample(test_script="#!/bin/sh\ngrep -q hello-from-build-args /greeting\n")
    sha = git_project.commit({"Dockerfile": dockerfile}, "build: take a greeting")
    git_project.push()

    run = agent.run(sha)

    assert (run.status, run.failed_step) == ("succeeded", None), run.error
    assert agent.registry.image_labels(run.version or "")["greeting"] == "hello-from-build-args"


def test_old_run_logs_are_pruned_to_log_retention_runs(make_agent, git_project: GitProject):
    agent = make_agent(log_retention_runs=2)
    runs = [agent.run(git_project.commit_sample())]
    for page in ("a", "b"):
        sha = git_project.commit({f"www/{page}.html": page}, f"fix: page {page}")
        git_project.push()
        runs.append(agent.run(sha))
    first, second, third = runs
    assert [run.status for run in runs] == ["succeeded"] * 3

    kept = sorted(path.name for path in agent.settings.log_dir.iterdir())
    assert kept == sorted(Path(run.log_path or "").name for run in (second, third))
    assert not Path(first.log_path or "").exists()


def test_a_run_by_sha_releases_a_side_commit_but_never_an_old_one(make_agent: Any, git_project: GitProject) -> None:
    agent: Agent = make_agent()
    first = git_project.commit_sample()
    assert agent.run(first).version == "0.1.0"
    side = git_project.commit({"www/side.html": "side"}, "fix: on a side branch")
    git("push", "--quiet", "origin", "HEAD:refs/heads/side", cwd=git_project.clone)
    git("reset", "--quiet", "--hard", first, cwd=git_project.clone)

    def by_sha(sha: str) -> Run:
        event = agent.pipeline.event_for_ref(sha)
        run = agent.store.create(kind="ci", commit=sha, ref=event.ref, details={"event": event.to_details()})
        return agent.pipeline.execute(run, event)

    again = by_sha(first)
    assert (again.status, again.details.get("already_released")) == ("superseded", "0.1.0"), again
    released = by_sha(side)  # not on the tracked branch, but a person named it
    assert (released.status, released.version) == ("succeeded", "0.1.1"), released
    assert agent.tags() == ["0.1.0", "0.1.1", "latest"]
    assert agent.emails() == []


def test_a_run_on_a_nearly_full_disk_fails_at_step_disk_before_anything_is_checked_out_or_tagged(
    make_agent, git_project: GitProject, docker_client
):
    """DISK_MIN_FREE, with the free-space reading set through its seam (a nearly full data root cannot be
    made without a second dockerd); git, the engine and the registry are real."""
    agent = make_agent()
    agent.pipeline.disk = DiskFloor(2_000_000_000, lambda: DiskReading("/var/lib/docker", 900_000_000))
    sha = git_project.commit_sample()

    run = agent.run(sha)

    assert (run.status, run.failed_step, run.version) == ("failed", "disk", None)
    assert "only 900.0 MB free where Docker keeps its data (/var/lib/docker)" in (run.error or "")
    assert "DISK_MIN_FREE=2.0 GB" in (run.error or "") and "docker builder prune" in (run.error or "")
    assert agent.tags() == []
    assert not docker_client.images.list(name=agent.pipeline.image.name)
    assert not agent.pipeline.checkout_dir.exists()
    emails = agent.emails()
    assert len(emails) == 1 and "failed at disk" in emails[0].subject
    assert "only 900.0 MB free" in emails[0].body

    # room again (pruned): the next run goes ahead, with the real reading of the engine's data root
    agent.pipeline.disk = DiskFloor(1, engine_free_space(agent.pipeline.docker.data_root))
    assert agent.run(sha).status == "succeeded"
