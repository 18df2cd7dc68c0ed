"""RegistryClient against real registries that want credentials: htpasswd (Basic) and token (Bearer)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from shared.errors import RegistryAuthError
from shared.registry import RegistryClient, parse_image_ref
from tests.support.docker_env import DockerJanitor, unique
from tests.support.registry_auth import AuthRegistry, TokenRegistry, push_image

pytestmark = pytest.mark.docker


def client(
    registry: AuthRegistry, name: str, *, password: str | None = None, anonymous: bool = False
) -> RegistryClient:
    if anonymous:
        return RegistryClient(parse_image_ref(name))
    return RegistryClient(
        parse_image_ref(name), username=registry.username, password=SecretStr(password or registry.password)
    )


@pytest.fixture(params=["htpasswd", "token"])
def auth_registry(request: pytest.FixtureRequest) -> AuthRegistry:
    registry: AuthRegistry = request.getfixturevalue(f"{request.param}_registry")
    return registry


def test_right_credentials_list_tags_and_read_digests(
    docker_client, docker_janitor: DockerJanitor, auth_registry: AuthRegistry
) -> None:
    name = f"{auth_registry.host}/{unique('auth')}/app"
    pushed = push_image(docker_client, docker_janitor, name, ["1.0.0", "1.1.0"], auth_config=auth_registry.auth_config)
    with client(auth_registry, name) as registry_client:
        assert sorted(registry_client.list_tags(page_size=1)) == ["1.0.0", "1.1.0"]
        assert registry_client.manifest_digest("1.1.0") == pushed["1.1.0"]
        assert registry_client.manifest_digest("2.0.0") is None
        assert registry_client.list_tags() == registry_client.list_tags()


def test_unknown_repository_with_right_credentials_has_no_tags(auth_registry: AuthRegistry) -> None:
    with client(auth_registry, f"{auth_registry.host}/{unique('auth')}/app") as registry_client:
        assert registry_client.list_tags() == []


def test_wrong_password_is_an_auth_error_naming_registry_and_user_but_not_the_password(
    auth_registry: AuthRegistry,
) -> None:
    wrong = "wrong-" + auth_registry.password
    with client(auth_registry, f"{auth_registry.host}/{unique('auth')}/app", password=wrong) as registry_client:
        with pytest.raises(RegistryAuthError) as error:
            registry_client.list_tags()
    message = str(error.value)
    assert auth_registry.host in message
    assert repr(auth_registry.username) in message
    assert wrong not in message
    assert auth_registry.password not in message


def test_no_credentials_is_an_auth_error_that_says_which_settings_to_set(auth_registry: AuthRegistry) -> None:
    with client(auth_registry, f"{auth_registry.host}/{unique('auth')}/app", anonymous=True) as registry_client:
        with pytest.raises(RegistryAuthError, match="REGISTRY_USERNAME and REGISTRY_PASSWORD"):
            registry_client.manifest_digest("1.0.0")


def test_bearer_token_is_fetched_once_per_scope(token_registry: TokenRegistry) -> None:
    name = f"{token_registry.host}/{unique('auth')}/app"
    before = len(token_registry.token_requests)
    with client(token_registry, name) as registry_client:
        for _ in range(3):
            registry_client.list_tags()
            registry_client.manifest_digest("1.0.0")
    requests = token_registry.token_requests[before:]
    assert requests == [{"authorization": "yes", "scope": f"repository:{name.split('/', 1)[1]}:pull"}]
