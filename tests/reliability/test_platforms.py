"""Multi-platform releases that cannot be made: a base image without the platform asked for.

Real pipeline runs (real git, dockerd, registry, QEMU user emulation) with CI_PLATFORMS set; the base
images are the test's own, pushed to the test registry as a single-platform image or an OCI index.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from ci_agent.builder import DockerGateway
from tests.support.docker_env import DockerJanitor, build_context_tar, busybox_dockerfile, unique
from tests.support.git_repos import make_git_project
from tests.support.oci_index import Publisher
from tests.support.platform_apps import commit_multi_sample, make_platform_agent
from tests.support.registry_server import RegistryServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# The sample app on top of a base image (the test's busybox image) instead of FROM scratch.
ON_BASE = """\
FROM {base} AS base
COPY www/ /www/

FROM base AS test
COPY tests/ /tests/

FROM base
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
"""


def _base_image(registry: RegistryServer, docker_client: Any, janitor: DockerJanitor, *, as_index: bool) -> str:
    """An amd64-only busybox image in the registry: a plain image manifest (kept locally too, as a build
    machine that pulled it before would have it), or an OCI index with only that image (not kept locally)."""
    repository = f"{registry.host}/{unique('base')}/busybox"
    docker_client.images.build(fileobj=build_context_tar(busybox_dockerfile()), custom_context=True,
                               tag=f"{repository}:1.0", rm=True)
    janitor.images.add(f"{repository}:1.0")
    docker_client.images.push(repository, tag="1.0")
    if not as_index:
        return f"{repository}:1.0"
    publisher = Publisher.for_image(repository)
    try:
        publisher.index("2.0", [publisher.oci_copy("1.0")])
    finally:
        publisher.close()
    docker_client.images.remove(f"{repository}:1.0")
    janitor.images.add(f"{repository}:2.0")
    return f"{repository}:2.0"


@pytest.mark.reliability(
    "CI_PLATFORMS=linux/amd64,linux/arm64 and the Dockerfile's base image has no linux/arm64 image: an OCI "
    "index with amd64 only (tests on linux/arm64: its build pulls first), or a single-platform amd64 image the "
    "build machine has already (Docker 20.10's classic builder then builds on it without a word)",
    "the run fails at the step that built for linux/arm64 (test, build) naming the platform and what is wrong "
    "with the base image, one email, nothing in the registry (no release, no staging tag); with CI_BUILDER=buildx "
    "the same (BuildKit's refusal of the index; the agent's check of the single-platform base BuildKit builds on)",
)
@pytest.mark.parametrize(
    ("builder", "as_index", "test_platforms", "step", "expected"),
    [
        ("classic", True, "linux/arm64", "test", "no matching manifest for linux/arm64 in the manifest list entries"),
        ("classic", False, "", "build", "the build made a linux/amd64 image, not linux/arm64: the base image has no "
                                        "linux/arm64 image"),
        # BuildKit refuses an index without the platform itself; a plain image of another platform it builds on,
        # labelling the result arm64: the agent looks at each base image BuildKit resolved (ci_agent/buildx.py).
        ("buildx", True, "linux/arm64", "test", "docker buildx build failed: failed to solve: no match for platform"),
        ("buildx", False, "", "build", "is a single-platform linux/amd64 image, not linux/arm64: BuildKit built on"),
    ],
    ids=["index-without-arm64", "single-platform-base", "buildx-index-without-arm64", "buildx-single-platform-base"],
)
def test_base_image_without_the_platform(
    builder: str, as_index: bool, test_platforms: str, step: str, expected: str, tmp_path: Path,
    registry: RegistryServer, docker_client: Any, docker_janitor: DockerJanitor,
):
    base = _base_image(registry, docker_client, docker_janitor, as_index=as_index)
    project = make_git_project(tmp_path)
    commit = commit_multi_sample(project, dockerfile=ON_BASE.format(base=base))
    agent = make_platform_agent(
        tmp_path, f"{registry.host}/{unique('multi')}/app", project.url, DockerGateway(docker_client),
        ci_platforms="linux/amd64,linux/arm64", ci_test_platforms=test_platforms, ci_builder=builder,
    )
    docker_janitor.images.update(agent.local_references())
    docker_janitor.name_prefixes.add(f"pi-cicd-ci-test-{agent.pipeline._instance}")
    try:
        run = agent.run(commit)
        assert (run.status, run.failed_step, run.version) == ("failed", step, None), agent.log(run)
        assert (run.error or "").startswith("linux/arm64: ")
        assert expected in (run.error or ""), run.error
        assert agent.registry.list_tags() == []
        [email] = agent.emails()
        assert f"failed at {step}" in email.subject and "linux/arm64" in email.body
    finally:
        agent.close()


@pytest.mark.reliability(
    "CI_BUILDER=buildx on a machine where `docker buildx version` does not answer (no plugin, no docker CLI)",
    "the run fails at its first platform step (test) saying buildx is missing and how to get it, one email, "
    "nothing built or tagged",
)
def test_buildx_insisted_on_without_buildx(
    tmp_path: Path, registry: RegistryServer, docker_client: Any, docker_janitor: DockerJanitor,
    monkeypatch: pytest.MonkeyPatch,
):
    project = make_git_project(tmp_path)
    commit = commit_multi_sample(project)
    agent = make_platform_agent(
        tmp_path, f"{registry.host}/{unique('multi')}/app", project.url, DockerGateway(docker_client),
        ci_platforms="linux/amd64,linux/arm64", ci_test_platforms="linux/arm64", ci_builder="buildx",
    )
    docker_janitor.images.update(agent.local_references())
    empty = tmp_path / "bin"
    empty.mkdir()
    git = shutil.which("git")
    assert git is not None
    (empty / "git").symlink_to(git)  # git for the checkout; no docker program on this PATH
    monkeypatch.setenv("PATH", str(empty))
    try:
        run = agent.run(commit)
        assert (run.status, run.failed_step, run.version) == ("failed", "test", None), agent.log(run)
        assert "CI_BUILDER=buildx, but `docker buildx version` does not answer" in (run.error or "")
        assert "scripts/buildx" in (run.error or "")
        assert agent.registry.list_tags() == []
        assert docker_client.api.images(name=agent.pipeline.image.name) == []
        [email] = agent.emails()
        assert "failed at test" in email.subject
    finally:
        agent.close()
