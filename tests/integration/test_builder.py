"""DockerGateway against the real dockerd and registry; the host test runner against real processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import docker.errors
import httpx
import pytest

from ci_agent.builder import DockerGateway, has_stage, run_host_command, split_tag
from ci_agent.errors import StepFailed
from tests.support.docker_env import DockerJanitor, busybox_dockerfile, unique, write_busybox_context
from tests.support.registry_server import RegistryServer


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [
        ("FROM scratch AS base\nFROM base AS test\nFROM base\n", True),
        ("from python:3.12 as Test\n", True),
        ("FROM --platform=$BUILDPLATFORM golang AS test\n", True),
        ("FROM scratch AS tests\nFROM scratch\n", False),
        ("FROM scratch\nRUN echo 'FROM x AS test'\n", False),
        ("# FROM x AS test\nFROM scratch\n", False),
    ],
)
def test_has_stage(dockerfile: str, expected: bool) -> None:
    assert has_stage(dockerfile, "test") is expected


def test_split_tag() -> None:
    assert split_tag("127.0.0.1:5000/o/app:1.2.3") == ("127.0.0.1:5000/o/app", "1.2.3")
    with pytest.raises(ValueError):
        split_tag("127.0.0.1:5000/o/app")


def _unshared(dockerfile: str) -> str:
    """``dockerfile`` with a unique first layer: every build labels its image with its own name
    (``pi-cicd.ci.image``), a step the legacy builder commits onto its cache parent, and fails when a cache
    parent shared with other builds is removed under it (another test's cleanup)."""
    return dockerfile.replace("FROM scratch\n", f"FROM scratch\nENV PICICD_NONCE={unique('nonce')}\n", 1)


@pytest.fixture
def gateway(docker_client) -> DockerGateway:
    return DockerGateway(docker_client)


def test_build_streams_output_tags_and_labels(gateway: DockerGateway, docker_janitor: DockerJanitor, tmp_path: Path):
    context = write_busybox_context(tmp_path / "ctx", _unshared(busybox_dockerfile()), {"www/index.html": "hi"})
    name = unique("builder")
    tags = [f"{name}:1.0.0", f"{name}:latest"]
    docker_janitor.images.update(tags)
    lines: list[str] = []

    image_id = gateway.build(
        context, tags, labels={"org.opencontainers.image.version": "1.0.0"}, on_output=lines.append
    )

    assert any("Step 1/" in line for line in lines)
    assert gateway.image_id(tags[1]) == image_id
    assert gateway.image_labels(tags[0])["org.opencontainers.image.version"] == "1.0.0"


def test_a_failing_build_is_a_build_step_failure(gateway: DockerGateway, docker_janitor: DockerJanitor, tmp_path: Path):
    context = write_busybox_context(tmp_path / "ctx", busybox_dockerfile(extra="RUN exit 3"))
    name = unique("builder")
    docker_janitor.images.add(f"{name}:x")
    lines: list[str] = []

    with pytest.raises(StepFailed) as caught:
        gateway.build(context, [f"{name}:x"], on_output=lines.append)

    assert caught.value.step == "build"
    assert "returned a non-zero code: 3" in caught.value.message
    assert gateway.image_id(f"{name}:x") is None


class _LosesACachedImageOnce:
    """The engine's API, whose first build ends as the classic builder's does when a cached image it stood on
    was removed by another process between two steps (the CD agent pruning an old release on the same engine)."""

    def __init__(self, api: Any, message: str) -> None:
        self._api, self._message, self.builds = api, message, 0

    def build(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.builds += 1
        if self.builds == 1:
            return iter([{"stream": "Step 1/5 : FROM scratch\n"}, {"errorDetail": {"message": self._message}}])
        return cast(Iterator[dict[str, Any]], self._api.build(**kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)


@pytest.mark.parametrize(
    "message",
    ["unknown parent image ID sha256:1e3f", "unable to find image sha256:9c2b", 'unable to find image "sha256:24d7"'],
)
def test_a_cached_image_lost_during_a_build_builds_once_more(
    docker_client, docker_janitor: DockerJanitor, tmp_path: Path, message: str
):
    engine = _LosesACachedImageOnce(docker_client.api, message)
    gateway = DockerGateway(SimpleNamespace(api=engine))
    context = write_busybox_context(tmp_path / "ctx", _unshared(busybox_dockerfile()))
    tag = f"{unique('builder')}:1.0.0"
    docker_janitor.images.add(tag)
    lines: list[str] = []

    image_id = gateway.build(context, [tag], on_output=lines.append)

    assert engine.builds == 2
    assert gateway.image_id(tag) == image_id
    assert any("lost a cached image" in line and message in line for line in lines)


def test_any_other_build_error_is_not_built_again(docker_client, docker_janitor: DockerJanitor, tmp_path: Path):
    engine = _LosesACachedImageOnce(docker_client.api, "pull access denied for nosuch/base")
    gateway = DockerGateway(SimpleNamespace(api=engine))
    context = write_busybox_context(tmp_path / "ctx", _unshared(busybox_dockerfile()))
    tag = f"{unique('builder')}:1.0.0"
    docker_janitor.images.add(tag)

    with pytest.raises(StepFailed, match="pull access denied"):
        gateway.build(context, [tag])
    assert engine.builds == 1


def _built(gateway: DockerGateway, janitor: DockerJanitor, tmp_path: Path) -> str:
    context = write_busybox_context(tmp_path / "ctx", _unshared(busybox_dockerfile()))
    tag = f"{unique('builder')}:t"
    janitor.images.add(tag)
    gateway.build(context, [tag])
    return tag


def test_run_tests_streams_output_returns_the_exit_code_and_removes_the_container(
    gateway: DockerGateway, docker_janitor: DockerJanitor, docker_client, tmp_path: Path
):
    image = _built(gateway, docker_janitor, tmp_path)
    name = unique("citest")
    docker_janitor.containers.add(name)
    lines: list[str] = []

    code = gateway.run_tests(image, "echo out; echo err >&2; exit 4", timeout=30, on_output=lines.append, name=name)

    assert code == 4
    assert "out" in lines and "err" in lines
    assert not docker_client.containers.list(all=True, filters={"name": name})


def test_run_tests_kills_the_container_at_the_time_limit(
    gateway: DockerGateway, docker_janitor: DockerJanitor, docker_client, tmp_path: Path
):
    image = _built(gateway, docker_janitor, tmp_path)
    name = unique("citest")
    docker_janitor.containers.add(name)
    started = time.monotonic()

    with pytest.raises(StepFailed) as caught:
        gateway.run_tests(image, "echo begin; sleep 60", timeout=2, name=name)

    assert caught.value.step == "test"
    assert "within 2s" in caught.value.message
    assert time.monotonic() - started < 30
    assert not docker_client.containers.list(all=True, filters={"name": name})


def test_push_to_the_registry(
    gateway: DockerGateway, docker_janitor: DockerJanitor, registry: RegistryServer, tmp_path
):
    repository = f"{registry.host}/{unique('builder')}/app"
    context = write_busybox_context(tmp_path / "ctx", _unshared(busybox_dockerfile()))
    docker_janitor.images.add(f"{repository}:0.1.0")
    gateway.build(context, [f"{repository}:0.1.0"])
    lines: list[str] = []

    gateway.push(repository, "0.1.0", on_output=lines.append)

    path = repository.split("/", 1)[1]
    assert httpx.get(f"{registry.url}/v2/{path}/tags/list").json()["tags"] == ["0.1.0"]
    assert any("digest" in line for line in lines)


def test_a_push_that_cannot_reach_the_registry_fails_at_push(
    gateway: DockerGateway, docker_janitor: DockerJanitor, tmp_path: Path
):
    from tests.support.ports import free_port

    repository = f"127.0.0.1:{free_port()}/{unique('builder')}/app"
    context = write_busybox_context(tmp_path / "ctx", _unshared(busybox_dockerfile()))
    docker_janitor.images.add(f"{repository}:0.1.0")
    gateway.build(context, [f"{repository}:0.1.0"])

    with pytest.raises(StepFailed) as caught:
        gateway.push(repository, "0.1.0")

    assert caught.value.step == "push"
    assert "connection refused" in caught.value.message.lower()


def test_host_runner_streams_output_and_returns_the_exit_code(tmp_path: Path):
    lines: list[str] = []

    code = run_host_command(
        ["sh", "-c", "pwd; echo failing >&2; exit 3"], cwd=tmp_path, timeout=20, on_output=lines.append
    )

    assert code == 3
    assert lines == [str(tmp_path), "failing"]


def test_host_runner_kills_the_whole_process_group_at_the_time_limit(tmp_path: Path):
    marker = tmp_path / "still-running"
    # The child outlives its parent's kill only if the group is not killed.
    script = f"(sleep 3; touch {marker}) & sleep 60"
    started = time.monotonic()

    with pytest.raises(StepFailed) as caught:
        run_host_command(["sh", "-c", script], cwd=tmp_path, timeout=1, on_output=lambda line: None)

    assert caught.value.step == "test"
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and not marker.exists():
        time.sleep(0.2)  # waiting out the window in which the killed child would have written
    assert not marker.exists()


def test_host_runner_reports_a_missing_program(tmp_path: Path):
    with pytest.raises(StepFailed, match="cannot run 'no-such-test-runner'"):
        run_host_command(["no-such-test-runner"], cwd=tmp_path, timeout=5)


def test_a_multi_stage_build_leaves_no_untagged_stage_images(
    gateway: DockerGateway, docker_janitor: DockerJanitor, docker_client, tmp_path: Path
):
    marker = unique("stage")
    dockerfile = busybox_dockerfile().replace("FROM scratch", "FROM scratch AS base", 1) + (
        f"FROM base AS test\nRUN echo {marker} > /marker\nFROM base\nCMD [\"true\"]\n"
    )
    context = write_busybox_context(tmp_path / "ctx", dockerfile)
    tag = f"{unique('builder')}:t"
    docker_janitor.images.add(tag)
    lines: list[str] = []

    gateway.build(context, [tag], on_output=lines.append)

    test_stage = [line for line in lines if marker in line]
    assert test_stage, "the classic builder built the test stage"
    dangling = docker_client.api.images(filters={"dangling": True}, quiet=True)
    for image in dangling:
        try:
            history = docker_client.api.history(image)
        except docker.errors.NotFound:
            continue  # removed meanwhile by a test running beside this one (scripts/test runs two at a time)
        assert not any(marker in (entry.get("CreatedBy") or "") for entry in history), "test stage left behind"
