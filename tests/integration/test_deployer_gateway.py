"""Docker's errors leave DockerGateway as the CD agent's own, naming what failed."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import docker
import docker.errors
import pytest
import requests
import urllib3

from cd_agent.docker_gateway import DockerGateway
from cd_agent.errors import DeployError, DockerUnavailable, EngineError
from tests.support.docker_env import busybox_dockerfile, unique, write_busybox_context
from tests.support.registry_server import RegistryServer

pytestmark = pytest.mark.docker


def test_an_engine_that_is_not_there_is_docker_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")

    with pytest.raises(DockerUnavailable, match="cannot reach the Docker Engine"):
        DockerGateway.from_env()


def test_actions_on_missing_containers_name_the_container() -> None:
    gateway = DockerGateway.from_env()
    name = unique("picicd-missing")
    try:
        assert gateway.container(name) is None
        with pytest.raises(EngineError, match=f"start container {name}.*HTTP 404") as refused:
            gateway.start(name)
        assert refused.value.status == 404
        with pytest.raises(EngineError, match=f"rename container {name} to x-{name}"):
            gateway.rename(name, f"x-{name}")
        gateway.remove(name)  # already gone is fine: removing is idempotent
    finally:
        gateway.close()


def test_pulling_a_tag_the_registry_lacks_names_the_reference(registry: RegistryServer) -> None:
    gateway = DockerGateway.from_env()
    repository = f"{registry.host}/{unique('missing')}/app"
    try:
        with pytest.raises(DeployError, match=f"pull {repository}:1.2.3"):
            gateway.pull(repository, "1.2.3")
    finally:
        gateway.close()


def test_a_pull_stream_cut_short_is_docker_unavailable() -> None:
    """dockerd stopping mid-pull ends the SDK's stream with urllib3's ProtocolError: converted, never raw."""

    class CutStream:
        def pull(self, *args: object, **kwargs: object) -> Iterator[dict[str, str]]:
            yield {"status": "Pulling fs layer"}
            raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(0 bytes read)")

    client = SimpleNamespace(api=CutStream())
    gateway = DockerGateway(client)
    with pytest.raises(DockerUnavailable, match="pull 127.0.0.1:1/x/app:1.0.0: cannot reach the Docker Engine"):
        gateway.pull("127.0.0.1:1/x/app", "1.0.0")


class Refusing:
    """An SDK API client whose ``start`` fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def start(self, container: str) -> None:
        raise self.error


def test_only_an_unreachable_engine_is_docker_unavailable() -> None:
    """An answer from the engine (any HTTP status) is an EngineError; no answer is DockerUnavailable."""
    response = requests.Response()
    response.status_code = 500
    allocated = docker.errors.APIError("500 Server Error", response, explanation="port is already allocated")
    gateway = DockerGateway(SimpleNamespace(api=Refusing(allocated)))
    with pytest.raises(EngineError, match=r"start container app: port is already allocated \(HTTP 500\)") as refused:
        gateway.start("app")
    assert refused.value.status == 500 and not isinstance(refused.value, DockerUnavailable)

    gone = requests.ConnectionError("('Connection aborted.', FileNotFoundError(2, 'No such file or directory'))")
    gateway = DockerGateway(SimpleNamespace(api=Refusing(gone)))
    with pytest.raises(DockerUnavailable, match="start container app: cannot reach the Docker Engine"):
        gateway.start("app")


def test_removing_a_release_leaves_none_of_its_own_untagged_parents_behind(tmp_path) -> None:
    """A release built on this engine (a Pi running both agents) has the classic builder's untagged parents: they
    go with it, or every release would leave its layers on the SD card for good."""
    client = docker.from_env()
    gateway = DockerGateway.from_env()
    repository = unique("picicd-parents")
    dockerfile = busybox_dockerfile(extra=f"LABEL parents={repository}")
    context = write_busybox_context(tmp_path / "context", dockerfile, {"www/index.html": repository})
    image, _ = client.images.build(path=str(context), tag=f"{repository}:1.0.0", rm=True)
    parents = [layer["Id"] for layer in client.api.history(image.id)[1:] if layer["Id"] != "<missing>"]
    try:
        assert parents, "the classic builder left no local parent images"
        gateway.remove_image(f"{repository}:1.0.0")
        assert client.images.list(name=repository) == []
        left = []
        for parent in parents:
            try:
                client.images.get(parent)
                left.append(parent)
            except docker.errors.ImageNotFound:
                pass
        # A parent shared with another image (the busybox layers of other tests' builds) rightly stays.
        assert left != parents, "every untagged parent of the removed release is still there"
    finally:
        for parent in parents:  # the nearest first: a parent with a child left cannot go
            try:
                client.api.remove_image(parent)
            except docker.errors.APIError:
                pass  # gone already, or another image still needs it
        gateway.close()
        client.close()
