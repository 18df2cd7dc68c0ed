"""Versions decided by whole CI runs: real git (reverts, tags), dockerd and the registry.

The same image repository is released by pipelines with different ``CI_TAG_STYLE`` settings, so the
registry holds the spellings a repository meets in practice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ci_agent.builder import DockerGateway
from ci_agent.git import GitRunner
from ci_agent.payload import ZERO_SHA, PushEvent
from ci_agent.pipeline import Pipeline
from ci_agent.settings import CiSettings
from ci_agent.targets import env_target
from ci_agent.versioning import TagStyle
from shared.notify import Notifier
from shared.registry import RegistryClient, parse_image_ref
from shared.runstore import Run, RunStore
from shared.testing import RecordingMailer
from tests.support.docker_env import DockerJanitor, unique
from tests.support.git_repos import GitProject, git
from tests.support.registry_server import RegistryServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

Release = Callable[..., Run]


@pytest.fixture
def release(
    tmp_path: Path, git_project: GitProject, registry: RegistryServer, docker_client: Any, docker_janitor: DockerJanitor
) -> Iterator[tuple[Release, RegistryClient]]:
    image = f"{registry.host}/{unique('versions')}/app"
    docker_janitor.images.update(f"{image}:{tag}" for tag in ("latest", "ci-test"))
    store = RunStore(tmp_path / "runs.db")
    notifier = Notifier(RecordingMailer(), attempts=1)
    client = RegistryClient(parse_image_ref(image))

    def run(sha: str, *, style: TagStyle = "auto", tag: str | None = None) -> Run:
        settings = CiSettings(
            ci_repo_url=git_project.url, ci_image=image, ci_allow_unsigned=True, ci_test_command="sh /tests/run.sh",
            ci_test_timeout=60, ci_push_attempts=1, ci_tag_style=style, log_dir=tmp_path / "logs",
            state_dir=tmp_path / "state",
        )
        pipeline = Pipeline(
            env_target(settings), store, notifier, GitRunner(timeout=60), DockerGateway(docker_client), client,
            push_retry_wait=0.1,
        )
        docker_janitor.containers.add(f"pi-cicd-ci-test-{pipeline._instance}-run-{len(store.list()) + 1}")
        ref = f"refs/tags/{tag}" if tag else "refs/heads/main"
        event = PushEvent(
            ref=ref, branch=None if tag else "main", tag=tag, after=sha, before=ZERO_SHA, deleted=False,
            repository="owner/app",
        )
        created = store.create(kind="ci", commit=sha, ref=ref, details={"event": event.to_details()})
        return pipeline.execute(created, event)

    yield run, client
    notifier.close(timeout=5)
    client.close()
    store.close()


def test_v_tags_are_versions_reverts_cancel_and_no_spelling_is_overwritten(
    release: tuple[Release, RegistryClient], git_project: GitProject
) -> None:
    run, registry = release
    git_project.commit_sample()
    sha = git_project.tag("v2.0.0", message="release 2.0.0")

    first = run(sha, style="v", tag="v2.0.0")
    assert (first.status, first.version) == ("succeeded", "v2.0.0")

    # A registry holding only v-tags: the next release follows them (not CI_INITIAL_VERSION, not 2.0.1).
    fix = git_project.commit({"www/index.html": "<p>hello again</p>\n"}, "fix: wording")
    git_project.push()
    assert run(fix).version == "v2.0.1"

    # A feature and its `git revert` in the same range: a patch, not a minor.
    git_project.commit({"www/new.html": "<p>new</p>\n"}, "feat: a new page")
    git("revert", "--no-edit", "HEAD", cwd=git_project.clone)
    git_project.push()
    reverted = run(git_project.head())
    assert (reverted.status, reverted.version) == ("succeeded", "v2.0.2"), reverted.error

    # A squash merge whose bullet announces a breaking change: a major.
    squash = git_project.commit(
        {"www/config.html": "<p>new config</p>\n"}, "Rework config (#12)\n\n* fix: a\n\n* BREAKING CHANGE: renamed"
    )
    git_project.push()
    plain = run(squash, style="plain")
    assert (plain.status, plain.version) == ("succeeded", "3.0.0")

    # 3.0.0 is taken, so v3.0.0 is too: a later commit tagged v3.0.0 is never released over it.
    git_project.commit({"www/late.html": "<p>late</p>\n"}, "fix: late")
    git_project.push()
    retag = git_project.tag("v3.0.0")
    taken = run(retag, style="v", tag="v3.0.0")
    assert (taken.status, taken.failed_step) == ("failed", "build")
    assert "v3.0.0 (from git tag v3.0.0) already exists in the registry (as 3.0.0)" in (taken.error or "")

    assert sorted(registry.list_tags()) == ["3.0.0", "latest", "v2.0.0", "v2.0.1", "v2.0.2"]
    assert registry.image_labels("latest")["org.opencontainers.image.revision"] == squash
