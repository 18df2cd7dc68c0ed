"""RegistryClient against the real distribution registry, with images pushed by the real Docker Engine."""

from __future__ import annotations

import pytest

from shared.errors import RegistryError, RegistryNotFound, RegistryUnavailable
from shared.platforms import parse_platform
from shared.registry import RegistryClient, parse_image_ref
from tests.support.docker_env import DockerJanitor, unique
from tests.support.ports import free_port
from tests.support.registry_auth import push_image
from tests.support.registry_server import RegistryServer, start_registry

pytestmark = pytest.mark.docker


def repository(registry: RegistryServer) -> str:
    return f"{registry.host}/{unique('reg')}/app"


def test_tags_of_a_pushed_image_are_listed_across_pages(
    docker_client, docker_janitor: DockerJanitor, registry: RegistryServer
) -> None:
    name = repository(registry)
    tags = ["0.1.0", "0.2.0", "1.0.0", "1.0.1", "2.0.0-rc.1", "latest"]
    push_image(docker_client, docker_janitor, name, tags)
    with RegistryClient(parse_image_ref(name)) as client:
        assert sorted(client.list_tags(page_size=2)) == sorted(tags)
        assert sorted(client.list_tags()) == sorted(tags)


def test_digest_of_a_tag_is_what_docker_push_reported(
    docker_client, docker_janitor: DockerJanitor, registry: RegistryServer
) -> None:
    name = repository(registry)
    pushed = push_image(docker_client, docker_janitor, name, ["1.0.0"])
    with RegistryClient(parse_image_ref(name)) as client:
        digest = client.manifest_digest("1.0.0")
    assert digest is not None and digest.startswith("sha256:")
    assert digest == pushed["1.0.0"]


def test_digest_of_a_missing_tag_is_none(
    docker_client, docker_janitor: DockerJanitor, registry: RegistryServer
) -> None:
    name = repository(registry)
    push_image(docker_client, docker_janitor, name, ["1.0.0"])
    with RegistryClient(parse_image_ref(name)) as client:
        assert client.manifest_digest("1.0.1") is None


def test_labels_of_an_image_built_with_label_lines(
    docker_client, docker_janitor: DockerJanitor, registry: RegistryServer
) -> None:
    name = repository(registry)
    labels = {"org.opencontainers.image.version": "1.2.3", "org.opencontainers.image.revision": "a" * 40}
    push_image(docker_client, docker_janitor, name, ["1.2.3"], labels=labels)
    with RegistryClient(parse_image_ref(name)) as client:
        found = client.image_labels("1.2.3")
        with pytest.raises(RegistryNotFound):
            client.image_labels("9.9.9")
    assert {key: found.get(key) for key in labels} == labels


def test_unknown_repository_has_no_tags_and_no_digests(registry: RegistryServer) -> None:
    with RegistryClient(parse_image_ref(repository(registry))) as client:
        assert client.list_tags() == []
        assert client.manifest_digest("1.0.0") is None


def test_a_registry_that_is_not_running_is_unavailable() -> None:
    with RegistryClient(parse_image_ref(f"127.0.0.1:{free_port()}/o/app"), timeout=5) as client:
        with pytest.raises(RegistryUnavailable, match="cannot reach registry 127.0.0.1"):
            client.list_tags()


def test_delete_tags_removes_only_those_tags_and_keeps_their_manifests(
    docker_client, docker_janitor: DockerJanitor, registry: RegistryServer
) -> None:
    """The distribution API deletes by digest only; the tags move onto a throwaway index that is deleted."""
    name = repository(registry)
    pushed = push_image(docker_client, docker_janitor, name, ["ci-staging-a", "ci-staging-b", "1.0.0"])
    with RegistryClient(parse_image_ref(name)) as client:
        client.delete_tags(["ci-staging-a", "ci-staging-b"], note="test")
        assert client.list_tags() == ["1.0.0"]
        # The manifest the removed tags named is still there, under 1.0.0 and by its digest.
        assert client.manifest_digest("1.0.0") == pushed["1.0.0"]
        assert client.entry(pushed["ci-staging-a"], parse_platform("linux/amd64")).digest == pushed["1.0.0"]
        # Again (the throwaway index is the same one): nothing left to remove, nothing else touched.
        client.delete_tags(["ci-staging-a"], note="test")
        assert client.list_tags() == ["1.0.0"]


def test_delete_tags_on_a_registry_that_refuses_deletion_moves_no_tag(
    docker_client, docker_janitor: DockerJanitor, tmp_path
) -> None:
    server = start_registry(tmp_path, delete=False)  # Debian's default config: storage.delete off
    try:
        name = f"{server.host}/{unique('reg')}/app"
        pushed = push_image(docker_client, docker_janitor, name, ["ci-staging-a", "1.0.0"])
        with RegistryClient(parse_image_ref(name)) as client:
            with pytest.raises(RegistryError, match="405.*UNSUPPORTED"):
                client.delete_tags(["ci-staging-a"], note="test")
            assert sorted(client.list_tags()) == ["1.0.0", "ci-staging-a"]
            assert client.manifest_digest("ci-staging-a") == pushed["ci-staging-a"]
    finally:
        server.stop()
