"""Multi-platform releases built by ``docker buildx`` (CI_BUILDER=buildx; Debian 13's docker-buildx plugin, which
``scripts/buildx`` installs and ``.ci/run`` runs): each platform built by the engine's BuildKit under QEMU, the
index assembled in the real registry as for the classic builder, and nothing tagged when one platform fails."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ci_agent.builder import DockerGateway
from ci_agent.buildx import buildx_version
from shared.platforms import parse_platform
from shared.registry import OCI_INDEX
from shared.runstore import Run
from tests.support.docker_env import DockerJanitor, build_context_tar, busybox_dockerfile, unique
from tests.support.git_repos import make_git_project
from tests.support.platform_apps import (
    FAILS_ON_ARM64,
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


@dataclass
class Release:
    agent: PlatformAgent
    run: Run
    log: str
    commit: str


def _agent(root: Path, registry: RegistryServer, docker_client: Any, janitor: DockerJanitor, url: str,
           **overrides: Any) -> PlatformAgent:
    agent = make_platform_agent(
        root, f"{registry.host}/{unique('bx')}/app", url, DockerGateway(docker_client), ci_builder="buildx",
        ci_platforms=BOTH, **overrides,
    )
    janitor.images.update(agent.local_references())
    janitor.name_prefixes.add(f"pi-cicd-ci-test-{agent.pipeline._instance}")
    return agent


@pytest.fixture(scope="module")
def buildx_release(
    buildx: str, tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer, docker_client: Any
) -> Iterator[Release]:
    """One release of the sample app for linux/amd64 and linux/arm64 built with buildx, tested on both."""
    root = tmp_path_factory.mktemp("buildx")
    project = make_git_project(root)
    commit = commit_multi_sample(project)
    janitor = DockerJanitor(docker_client)
    agent = _agent(root, registry, docker_client, janitor, project.url, ci_test_platforms=BOTH)
    try:
        run = agent.run(commit)
        yield Release(agent, run, agent.log(run), commit)
    finally:
        janitor.cleanup()
        agent.close()


def _get(registry: RegistryServer, repository: str, reference: str, accept: str) -> httpx.Response:
    return httpx.get(f"{registry.url}/v2/{repository}/manifests/{reference}", headers={"Accept": accept})


def test_a_buildx_release_is_one_oci_index_with_an_image_per_platform(
    buildx_release: Release, registry: RegistryServer
):
    release = buildx_release
    assert (release.run.status, release.run.version, release.run.failed_step) == ("succeeded", "0.1.0", None), (
        release.log
    )
    client = release.agent.registry
    assert sorted(client.platforms("0.1.0") or []) == [parse_platform("linux/amd64"), parse_platform("linux/arm64")]
    assert client.manifest_digest("latest") == client.manifest_digest("0.1.0")
    repository = release.agent.pipeline.image.repository
    index = _get(registry, repository, "0.1.0", OCI_INDEX)
    assert index.headers["content-type"] == OCI_INDEX
    for entry in index.json()["manifests"]:
        manifest = _get(registry, repository, entry["digest"], entry["mediaType"]).json()
        config = httpx.get(f"{registry.url}/v2/{repository}/blobs/{manifest['config']['digest']}").json()
        assert config["architecture"] == entry["platform"]["architecture"]
        labels = config["config"]["Labels"]
        assert labels["org.opencontainers.image.revision"] == release.commit
        assert labels["org.opencontainers.image.version"] == "0.1.0"
        assert labels["pi-cicd.ci.image"] == release.agent.pipeline.image.name  # CI_DISK_BUDGET's mark
    assert sorted(client.list_tags()) == ["0.1.0", "latest"]


def test_the_log_says_buildx_built_each_step_and_times_each_platform(buildx_release: Release, buildx: str):
    log = buildx_release.log
    # once for the test images, once for the release images
    assert log.count(f"builder: docker buildx {buildx} (the engine's BuildKit, one platform per build") == 2, log
    assert "classic builder" not in log
    assert "[build linux/arm64] #" in log  # BuildKit's plain progress, step by step
    assert "[test linux/arm64] sample tests passed" in log and "[test linux/amd64] sample tests passed" in log
    assert re.search(r"build for linux/arm64 took \d+\.\ds \(emulated: \d+\.\dx the linux/amd64 build\)", log)


def test_each_platforms_buildx_image_runs_as_that_platform(buildx_release: Release, docker_client: Any):
    image = buildx_release.agent.pipeline.image
    reference = image.with_tag("0.1.0")
    try:
        for wanted, machine in (("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")):
            docker_client.images.pull(image.name, tag="0.1.0", platform=wanted)
            output = docker_client.containers.run(
                reference, ["uname", "-m"], platform=wanted, remove=True, name=unique("picicd-uname"),
            )
            assert output.decode().strip() == machine
    finally:
        docker_client.images.remove(reference, force=True)


def test_one_platform_failing_its_tests_under_buildx_tags_nothing(
    buildx: str, tmp_path: Path, registry: RegistryServer, docker_client: Any, docker_janitor: DockerJanitor
):
    project = make_git_project(tmp_path)
    commit = commit_multi_sample(project, test_script=FAILS_ON_ARM64)
    agent = _agent(tmp_path, registry, docker_client, docker_janitor, project.url, ci_test_platforms=BOTH)
    try:
        run = agent.run(commit)
        assert (run.status, run.failed_step, run.version) == ("failed", "test", None)
        assert "exited with code 1 on linux/arm64" in (run.error or "")
        assert f"builder: docker buildx {buildx}" in agent.log(run)
        assert agent.registry.list_tags() == []
    finally:
        agent.close()


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
