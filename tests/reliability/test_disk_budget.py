"""CI_DISK_BUDGET against the real engine: real CI runs (git, dockerd, the registry) with a budget, and what
is left on the engine after each; images this test makes itself stand for everything CI did not make."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest

from ci_agent.builder import DockerGateway
from ci_agent.disk_budget import OWNER_LABEL, DiskBudget
from ci_agent.git import GitRunner
from ci_agent.payload import ZERO_SHA, PushEvent
from ci_agent.pipeline import VERSION_LABEL, Pipeline
from ci_agent.settings import CiSettings
from ci_agent.targets import env_target
from shared.notify import Notifier
from shared.registry import RegistryClient, parse_image_ref
from shared.runstore import Run, RunStore
from shared.testing import RecordingMailer
from tests.support.docker_env import DockerJanitor, unique
from tests.support.git_repos import GitProject
from tests.support.registry_server import RegistryServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def build_stranger(client: Any, tag: str, labels: dict[str, str] | None = None) -> str:
    """A one-file image from scratch that CI did not build (its id)."""
    dockerfile = "FROM scratch\nCOPY note /note\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in (("Dockerfile", dockerfile.encode()), ("note", tag.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    image, _ = client.images.build(fileobj=buffer, custom_context=True, tag=tag, labels=labels or {}, rm=True)
    return str(image.id)


def image_exists(client: Any, reference: str) -> bool:
    try:
        client.api.inspect_image(reference)
    except docker.errors.NotFound:
        return False
    return True


@pytest.mark.reliability(
    "CI runs one after another on an engine whose CI images exceed CI_DISK_BUDGET (a tiny budget), while "
    "an old release is still used by a container, and with images CI did not make on the engine",
    "after each run the test image and the old release CI built are pruned (the one in use once it is free), "
    "the last release (`latest`) stays, and an image made by hand, another agent's labelled image and an "
    "image with a tag CI does not make are untouched; the run log says what was pruned",
)
def test_a_tiny_budget_prunes_old_ci_images_keeps_the_last_release_and_touches_nothing_else(
    tmp_path: Path, git_project: GitProject, registry: RegistryServer, docker_client: Any,
    docker_janitor: DockerJanitor,
) -> None:
    image = f"{registry.host}/{unique('budget')}/app"
    settings = CiSettings(
        ci_repo_url=git_project.url, ci_image=image, ci_allow_unsigned=True, ci_test_command="sh /tests/run.sh",
        ci_test_timeout=60, ci_push_attempts=1, log_dir=tmp_path / "logs", state_dir=tmp_path / "state",
    )
    store = RunStore(tmp_path / "runs.db")
    notifier = Notifier(RecordingMailer(), attempts=1)
    registry_client = RegistryClient(parse_image_ref(image))
    pipeline = Pipeline(
        env_target(settings), store, notifier, GitRunner(timeout=60), DockerGateway(docker_client),
        registry_client, push_retry_wait=0.1, budget=DiskBudget(10**12, lambda: [image]),
    )
    docker_janitor.images.update(f"{image}:{tag}" for tag in ("latest", "ci-test", "0.1.0", "0.1.1", "0.1.2"))
    docker_janitor.containers.update(f"pi-cicd-ci-test-{pipeline._instance}-run-{n}" for n in range(1, 5))
    # What CI did not make: an image by hand, another agent's labelled test image, and one of CI's own
    # release images that someone tagged by hand (as the CD agent tags what it pulls).
    stranger = f"{unique('stranger')}/thing:1"
    other_agent = f"{registry.host}/{unique('other')}/app:ci-test"
    docker_janitor.images.update({stranger, other_agent})
    stranger_id = build_stranger(docker_client, stranger)
    other_id = build_stranger(docker_client, other_agent, {OWNER_LABEL: other_agent.rpartition(":")[0]})

    def run(sha: str) -> Run:
        event = PushEvent(ref="refs/heads/main", branch="main", tag=None, after=sha, before=ZERO_SHA,
                          deleted=False, repository="owner/app")
        created = store.create(kind="ci", commit=sha, ref=event.ref, details={"event": event.to_details()})
        return pipeline.execute(created, event)

    try:
        # Under a generous budget the test image stays: it is the next run's build cache.
        first = run(git_project.commit_sample())
        assert (first.status, first.version) == ("succeeded", "0.1.0")
        assert image_exists(docker_client, f"{image}:ci-test")
        assert "disk budget: CI holds" in Path(first.log_path or "").read_text()
        first_release = docker_client.api.inspect_image(f"{image}:latest")["Id"]
        docker_janitor.images.add(first_release)

        # Someone tags the first release by hand: from now on it is theirs too.
        docker_client.api.tag(first_release, image, "by-hand")
        docker_janitor.images.add(f"{image}:by-hand")
        pipeline.budget = DiskBudget(1, lambda: [image])

        # A container keeps the second release in use while the third replaces it as `latest`.
        git_project.commit({"www/index.html": "<p>hello, second</p>\n"}, "fix: second")
        git_project.push()
        second = run(git_project.head())
        assert (second.status, second.version) == ("succeeded", "0.1.1")
        second_release = docker_client.api.inspect_image(f"{image}:latest")["Id"]
        docker_janitor.images.add(second_release)
        assert not image_exists(docker_client, f"{image}:ci-test")  # pruned: over the budget
        holder = unique("budget-holder")
        docker_janitor.containers.add(holder)
        docker_client.api.create_container(second_release, name=holder, command=["/bin/true"])

        git_project.commit({"www/index.html": "<p>hello, third</p>\n"}, "fix: third")
        git_project.push()
        third = run(git_project.head())
        assert (third.status, third.version) == ("succeeded", "0.1.2")
        # `latest` moved on; the second release could not go (in use), and is now untagged
        assert image_exists(docker_client, second_release)
        assert not docker_client.api.inspect_image(second_release)["RepoTags"]
        third_log = Path(third.log_path or "").read_text()
        assert "disk budget: could not prune untagged" in third_log

        docker_client.api.remove_container(holder)
        git_project.commit({"www/index.html": "<p>hello, fourth</p>\n"}, "fix: fourth")
        git_project.push()
        fourth = run(git_project.head())
        assert (fourth.status, fourth.version) == ("succeeded", "0.1.3")
        fourth_log = Path(fourth.log_path or "").read_text()
        assert f"disk budget: pruned untagged {image} image {second_release[7:19]}" in fourth_log
        assert f"disk budget: pruned {image}:ci-test" in fourth_log

        # What is left: the last release, and everything CI did not make
        assert not image_exists(docker_client, second_release)
        assert not image_exists(docker_client, f"{image}:ci-test")
        latest = docker_client.api.inspect_image(f"{image}:latest")
        assert latest["Config"]["Labels"][VERSION_LABEL] == "0.1.3"
        assert latest["Config"]["Labels"][OWNER_LABEL] == image
        assert docker_client.api.inspect_image(stranger)["Id"] == stranger_id
        assert docker_client.api.inspect_image(other_agent)["Id"] == other_id
        assert docker_client.api.inspect_image(f"{image}:by-hand")["Id"] == first_release
    finally:
        notifier.close(timeout=5)
        registry_client.close()
        store.close()
