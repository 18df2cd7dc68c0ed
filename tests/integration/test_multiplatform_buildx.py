"""What only ``docker buildx`` builds do (CI_BUILDER=buildx; Debian 13's docker-buildx plugin, which
``scripts/buildx`` installs and ``.ci/run`` runs): a platform whose build fails, and a cross-compiling stage.
The releases both builders make alike are tests/integration/test_multiplatform.py's, for each builder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ci_agent.builder import DockerGateway
from ci_agent.buildx import buildx_version
from tests.support.docker_env import DockerJanitor, build_context_tar, busybox_dockerfile, unique
from tests.support.git_repos import make_git_project
from tests.support.platform_apps import (
    MULTI_DOCKERFILE,
    PlatformAgent,
    commit_multi_sample,
    make_platform_agent,
)
from tests.support.registry_server import RegistryServer

pytestmark = pytest.mark.docker

BOTH = "linux/amd64,linux/arm64"

# The release stage fails to build on arm64 only (its tests pass everywhere: no test stage is built here).
BUILD_FAILS_ON_ARM64 = MULTI_DOCKERFILE.replace(
    'CMD ["httpd"',
    'RUN ["/bin/sh", "-c", "[ $(uname -m) != aarch64 ] || { echo no arm64 build; exit 3; }"]\nCMD ["httpd"',
)


@pytest.fixture(scope="module")
def buildx() -> str:
    version = buildx_version()
    if version is None:
        pytest.fail("no `docker buildx` on this machine: run scripts/buildx (as root; .ci/run does) first")
    return version


def _agent(root: Path, registry: RegistryServer, docker_client: Any, janitor: DockerJanitor, url: str,
           **overrides: Any) -> PlatformAgent:
    agent = make_platform_agent(
        root, f"{registry.host}/{unique('bx')}/app", url, DockerGateway(docker_client), ci_builder="buildx",
        ci_platforms=BOTH, **overrides,
    )
    janitor.images.update(agent.local_references())
    janitor.name_prefixes.add(f"pi-cicd-ci-test-{agent.pipeline._instance}")
    return agent


def test_one_platform_failing_its_buildx_build_tags_nothing_and_names_buildkits_error(
    buildx: str, tmp_path: Path, registry: RegistryServer, docker_client: Any, docker_janitor: DockerJanitor
):
    project = make_git_project(tmp_path)
    commit = commit_multi_sample(project, dockerfile=BUILD_FAILS_ON_ARM64)
    agent = _agent(tmp_path, registry, docker_client, docker_janitor, project.url)
    try:
        run = agent.run(commit)
        assert (run.status, run.failed_step, run.version) == ("failed", "build", None), agent.log(run)
        error = run.error or ""
        assert error.startswith("linux/arm64: docker buildx build failed: "), error
        assert "exit code: 3" in error, error
        log = agent.log(run)
        assert re.search(r"\[build linux/arm64\] #\d+ [\d.]+ no arm64 build", log)  # the RUN's own output
        assert "built " in log and "for linux/amd64" in log  # the amd64 image was built first, and is not pushed
        assert agent.registry.list_tags() == []
        [email] = agent.emails()
        assert "linux/arm64" in email.body
    finally:
        agent.close()


def test_a_cross_compiling_stage_on_the_build_platform_may_use_a_single_platform_base(
    buildx: str, tmp_path: Path, registry: RegistryServer, docker_client: Any, docker_janitor: DockerJanitor
):
    """``FROM --platform=$BUILDPLATFORM`` is meant to run on the build machine: the agent's check of the base
    images BuildKit built on (a plain amd64 image under an arm64 build) leaves that stage alone."""
    base = f"{registry.host}/{unique('base')}/busybox:1.0"
    docker_client.images.build(fileobj=build_context_tar(busybox_dockerfile()), custom_context=True, tag=base, rm=True)
    docker_janitor.images.add(base)
    docker_client.images.push(base.rsplit(":", 1)[0], tag="1.0")
    # Only in the registry: with a local copy of the build platform's, BuildKit takes that and names no digest.
    docker_client.images.remove(base)
    dockerfile = (
        f"FROM --platform=$BUILDPLATFORM {base} AS tools\n"
        'RUN ["/bin/sh", "-c", "uname -m > /machine"]\n\n'
        + MULTI_DOCKERFILE.replace('CMD ["httpd"', 'COPY --from=tools /machine /www/built-on\nCMD ["httpd"')
    )
    project = make_git_project(tmp_path)
    commit = commit_multi_sample(project, dockerfile=dockerfile)
    agent = _agent(tmp_path, registry, docker_client, docker_janitor, project.url)
    try:
        run = agent.run(commit)
        assert (run.status, run.version) == ("succeeded", "0.1.0"), agent.log(run)
        log = agent.log(run)
        assert f"[tools 1/2] FROM {base}@sha256:" in log  # BuildKit built the stage on the plain amd64 image
        assert "could not check" not in log
    finally:
        agent.close()
