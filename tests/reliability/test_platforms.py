"""Multi-platform releases that cannot be made: a base image without the platform asked for.

Real pipeline runs (real git, dockerd, registry, QEMU user emulation) with CI_PLATFORMS set; the base
images are the test's own, pushed to the test registry as a single-platform image or an OCI index.
"""

from __future__ import annotations

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
    "with the base image, one email, nothing in the registry (no release, no staging tag)",
)
@pytest.mark.parametrize(
    ("as_index", "test_platforms", "step", "expected"),
    [
        (True, "linux/arm64", "test", "no matching manifest for linux/arm64 in the manifest list entries"),
        (False, "", "build", "the build made a linux/amd64 image, not linux/arm64: the base image has no "
                             "linux/arm64 image"),
    ],
    ids=["index-without-arm64", "single-platform-base"],
)
def test_base_image_without_the_platform(
    as_index: bool, test_platforms: str, step: str, expected: str, tmp_path: Path, registry: RegistryServer,
    docker_client: Any, docker_janitor: DockerJanitor,
):
    base = _base_image(registry, docker_client, docker_janitor, as_index=as_index)
    project = make_git_project(tmp_path)
    commit = commit_multi_sample(project, dockerfile=ON_BASE.format(base=base))
    agent = make_platform_agent(
        tmp_path, f"{registry.host}/{unique('multi')}/app", project.url, DockerGateway(docker_client),
        ci_platforms="linux/amd64,linux/arm64", ci_test_platforms=test_platforms,
    )
    docker_janitor.images.update(agent.local_references())
    docker_janitor.name_prefixes.add(f"pi-cicd-ci-test-{agent.pipeline._instance}")
    try:
        run = agent.run(commit)
        assert (run.status, run.failed_step, run.version) == ("failed", step, None), agent.log(run)
        assert (run.error or "").startswith("linux/arm64: ")
        assert expected in (run.error or "")
        assert agent.registry.list_tags() == []
        [email] = agent.emails()
        assert f"failed at {step}" in email.subject and "linux/arm64" in email.body
    finally:
        agent.close()
