"""Multi-platform releases (``CI_PLATFORMS``) built under QEMU user emulation by the classic builder and by
``docker buildx`` (``CI_BUILDER``; the plugin ``scripts/buildx`` installs), assembled into an OCI image index in
the real registry; one two-platform release per builder shared by the module."""

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
from tests.support.cd_apps import CdWorld, cd_agent
from tests.support.docker_env import DockerJanitor, unique
from tests.support.git_repos import make_git_project
from tests.support.platform_apps import FAILS_ON_ARM64, PlatformAgent, commit_multi_sample, make_platform_agent
from tests.support.registry_server import RegistryServer

pytestmark = pytest.mark.docker


BUILDERS = ["classic", "buildx"]


@dataclass
class Release:
    agent: PlatformAgent
    run: Run
    log: str
    commit: str
    builder_line: str  # what the log says of the builder, at the test and at the build step


def builder_line(builder: str) -> str:
    if builder == "classic":
        return "builder: the classic builder (Docker SDK; CI_BUILDER=classic)"
    version = buildx_version()
    if version is None:
        pytest.fail("no `docker buildx` on this machine: run scripts/buildx (as root; .ci/run does) first")
    return f"builder: docker buildx {version} (the engine's BuildKit, one platform per build, docker driver)"


@pytest.fixture(scope="module", params=BUILDERS)
def two_platform_release(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer,
    docker_client: Any,
) -> Iterator[Release]:
    """One release of the sample app for linux/amd64 and linux/arm64, tested on both, by each builder."""
    line = builder_line(request.param)
    root = tmp_path_factory.mktemp("multiplatform")
    project = make_git_project(root)
    commit = commit_multi_sample(project)
    agent = make_platform_agent(
        root, f"{registry.host}/{unique('multi')}/app", project.url, DockerGateway(docker_client),
        ci_platforms="linux/amd64,linux/arm64", ci_test_platforms="linux/amd64,linux/arm64",
        ci_builder=request.param,
    )
    janitor = DockerJanitor(docker_client)
    janitor.images.update(agent.local_references())
    janitor.name_prefixes.add(f"pi-cicd-ci-test-{agent.pipeline._instance}")
    try:
        run = agent.run(commit)
        yield Release(agent, run, agent.log(run), commit, line)
    finally:
        janitor.cleanup()
        agent.close()


def _get(registry: RegistryServer, repository: str, reference: str, accept: str) -> httpx.Response:
    return httpx.get(f"{registry.url}/v2/{repository}/manifests/{reference}", headers={"Accept": accept})


def test_a_release_is_one_oci_index_with_an_image_per_platform(two_platform_release: Release, registry: RegistryServer):
    release = two_platform_release
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
        # Each image is what its entry says, and carries the release's labels.
        assert config["architecture"] == entry["platform"]["architecture"]
        assert config["config"]["Labels"]["org.opencontainers.image.revision"] == release.commit
        assert config["config"]["Labels"]["org.opencontainers.image.version"] == "0.1.0"
        assert config["config"]["Labels"]["pi-cicd.ci.image"] == release.agent.pipeline.image.name  # CI_DISK_BUDGET
    # The release guard and the next version read the labels of an index as of a single image.
    assert client.image_labels("0.1.0")["org.opencontainers.image.revision"] == release.commit
    # Only the release tags: the staging tags the engine pushed were removed once the index was tagged.
    assert sorted(client.list_tags()) == ["0.1.0", "latest"]
    assert "removed the staging tags ci-staging-linux-amd64, ci-staging-linux-arm64 from the registry" in release.log


def test_the_log_says_each_platforms_time_and_the_emulation_factor(two_platform_release: Release):
    log = two_platform_release.log
    assert "[test linux/arm64] sample tests passed" in log
    assert "[test linux/amd64] sample tests passed" in log
    assert re.search(r"test for linux/amd64 took \d+\.\ds\n", log)
    assert re.search(r"test for linux/arm64 took \d+\.\ds \(emulated: \d+\.\dx the linux/amd64 test\)", log)
    assert re.search(r"build for linux/arm64 took \d+\.\ds \(emulated: \d+\.\dx the linux/amd64 build\)", log)
    assert "tagged" in log and "as the image index sha256:" in log
    assert log.count(two_platform_release.builder_line) == 2, log  # the test and build steps each say it


def test_each_platforms_image_runs_as_that_platform(two_platform_release: Release, docker_client: Any):
    image = two_platform_release.agent.pipeline.image
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


@pytest.mark.parametrize("builder", BUILDERS)
def test_one_platform_failing_its_tests_tags_nothing(
    builder: str, tmp_path: Path, registry: RegistryServer, docker_client: Any, docker_janitor: DockerJanitor
):
    line = builder_line(builder)
    project = make_git_project(tmp_path)
    commit = commit_multi_sample(project, test_script=FAILS_ON_ARM64)
    agent = make_platform_agent(
        tmp_path, f"{registry.host}/{unique('multi')}/app", project.url, DockerGateway(docker_client),
        ci_platforms="linux/amd64,linux/arm64", ci_test_platforms="linux/amd64,linux/arm64", ci_builder=builder,
    )
    docker_janitor.images.update(agent.local_references())
    docker_janitor.name_prefixes.add(f"pi-cicd-ci-test-{agent.pipeline._instance}")
    try:
        run = agent.run(commit)
        assert (run.status, run.failed_step, run.version) == ("failed", "test", None)
        assert "exited with code 1 on linux/arm64" in (run.error or "")
        assert line in agent.log(run)
        assert agent.registry.list_tags() == []
        [email] = agent.emails()
        assert "linux/arm64" in email.body and "wrong on arm64" in email.body
    finally:
        agent.close()



def test_cd_agent_plays_the_pi_deploying_the_arm64_image_of_the_release(
    two_platform_release: Release, cd_world: CdWorld, docker_client: Any
):
    """CD_PLATFORM=linux/arm64 on this amd64 machine: the release CI built here is chosen, its arm64 image
    pulled and run under emulation, health-checked through CD_HEALTH_URL and served."""
    world = cd_world
    image = two_platform_release.agent.pipeline.image
    world.janitor.images.add(image.with_tag("0.1.0"))
    environ = world.environ(CD_IMAGE=image.name, CD_PLATFORM="linux/arm64", CD_HEALTH_URL=world.url,
                            CD_HEALTH_TIMEOUT="30")
    result = cd_agent("deploy", environ=environ, cwd=world.root)
    assert result.returncode == 0, result.stderr
    assert world.served() == "<p>hello</p>\n"
    container = docker_client.api.inspect_container(world.name)
    assert docker_client.api.inspect_image(container["Image"])["Architecture"] == "arm64"
    assert container["Config"]["Labels"]["io.pi-cicd.version"] == "0.1.0"
    code, output = docker_client.containers.get(world.name).exec_run(["uname", "-m"])
    assert (code, output.decode().strip()) == (0, "aarch64")
