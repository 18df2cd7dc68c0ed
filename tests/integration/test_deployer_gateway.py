"""Docker's errors leave DockerGateway as the CD agent's own, naming what failed."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import urllib3

from cd_agent.docker_gateway import DockerGateway
from cd_agent.errors import DeployError, DockerUnavailable
from tests.support.docker_env import unique
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
        with pytest.raises(DockerUnavailable, match=f"start container {name}.*HTTP 404"):
            gateway.start(name)
        with pytest.raises(DockerUnavailable, match=f"rename container {name} to x-{name}"):
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
