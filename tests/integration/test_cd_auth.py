"""``cd-agent deploy`` against registries that want credentials: Basic (htpasswd) and bearer tokens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cd_apps import cd_agent
from tests.support.docker_env import DockerJanitor, unique
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.registry_auth import AuthRegistry, push_image

pytestmark = [pytest.mark.docker]


@pytest.mark.parametrize("registry_fixture", ["htpasswd_registry", "token_registry"])
def test_deploys_with_credentials_and_names_the_registry_when_they_are_wrong(
    registry_fixture: str,
    request: pytest.FixtureRequest,
    docker_client: Any,
    docker_janitor: DockerJanitor,
    tmp_path: Path,
    secret: Callable[[str], str],
) -> None:
    registry: AuthRegistry = request.getfixturevalue(registry_fixture)
    secret(registry.password)
    repository = f"{registry.host}/{unique('auth')}/app"
    push_image(docker_client, docker_janitor, repository, ["1.0.0"], auth_config=registry.auth_config)
    docker_client.images.remove(f"{repository}:1.0.0", force=True)  # the deploy has to pull it
    name = unique("picicd-auth")
    docker_janitor.name_prefixes.add(name)
    port = free_port()
    environ = {
        "CD_IMAGE": repository,
        "CD_CONTAINER_NAME": name,
        "CD_PORTS": f"127.0.0.1:{port}:8080",
        "CD_HEALTH_GRACE": "1",
        "CD_HEALTH_TIMEOUT": "30",
        "CD_STOP_TIMEOUT": "1",
        "REGISTRY_USERNAME": registry.username,
        "REGISTRY_PASSWORD": registry.password,
        "LOG_DIR": str(tmp_path / "logs"),
        "STATE_DIR": str(tmp_path / "state"),
    }

    wrong = "wrong-password-Vb7"
    refused = cd_agent("deploy", environ={**environ, "REGISTRY_PASSWORD": wrong}, cwd=tmp_path)
    assert refused.returncode == 1, refused.stderr
    assert registry.host in refused.stderr and registry.username in refused.stderr
    assert wrong not in refused.stdout + refused.stderr
    assert not docker_client.containers.list(all=True, filters={"name": name})

    deployed = cd_agent("deploy", environ=environ, cwd=tmp_path)
    assert deployed.returncode == 0, deployed.stderr
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/").status_code == 200, timeout=30, what="the app answers")
    assert registry.password not in deployed.stdout + deployed.stderr
