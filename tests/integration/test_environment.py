"""The real components the suite depends on are there and work together."""

from __future__ import annotations

import httpx

from tests.support.docker_env import DockerJanitor, build_context_tar, busybox_dockerfile, unique
from tests.support.registry_server import RegistryServer


def test_busybox_image_builds_and_pushes_to_the_registry(
    docker_client, docker_janitor: DockerJanitor, registry: RegistryServer
) -> None:
    repository = f"{registry.host}/{unique('env')}/app"
    image, _ = docker_client.images.build(
        fileobj=build_context_tar(busybox_dockerfile(), {"www/index.html": "hi"}),
        custom_context=True,
        tag=f"{repository}:1.0.0",
        rm=True,
    )
    docker_janitor.images.add(f"{repository}:1.0.0")
    for line in docker_client.images.push(repository, tag="1.0.0", stream=True, decode=True):
        assert "error" not in line, line
    name = repository.split("/", 1)[1]
    tags = httpx.get(f"{registry.url}/v2/{name}/tags/list").json()["tags"]
    assert tags == ["1.0.0"]
