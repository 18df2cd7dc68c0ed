"""Pure logic of the swarm strategy: versions read from pinned images, the fleet platform check."""

from __future__ import annotations

import pytest

from cd_agent.fleet_platforms import FleetPlatformCheck, node_platform
from cd_agent.images import digest_of, version_of
from shared.platforms import Platform, parse_platform

AMD64 = parse_platform("linux/amd64")


class Registry:
    def __init__(self, offered: list[str] | None) -> None:
        self.offered = offered

    def platforms(self, reference: str) -> list[Platform] | None:
        return None if self.offered is None else [parse_platform(text) for text in self.offered]


@pytest.mark.parametrize(
    ("image", "version", "digest"),
    [
        ("127.0.0.1:5000/me/app:1.2.0@sha256:abc", "1.2.0", "sha256:abc"),
        ("me/app:v2.0.0", "v2.0.0", None),
        ("me/app:latest@sha256:abc", "adopted", "sha256:abc"),
        ("127.0.0.1:5000/me/app@sha256:abc", None, "sha256:abc"),
    ],
)
def test_the_version_and_digest_of_a_service_image(image, version, digest):
    assert version_of(image) == version
    assert digest_of(image) == digest


@pytest.mark.parametrize(
    ("uname", "expected"),
    [("x86_64", "linux/amd64"), ("aarch64", "linux/arm64"), ("armv7l", "linux/arm/v7"), ("armv6l", "linux/arm/v6")],
)
def test_a_node_platform_from_its_uname_machine(uname, expected):
    assert str(node_platform("linux", uname)) == expected


def test_a_release_lacking_one_node_platform_names_that_node():
    nodes = {"pi-a": node_platform("linux", "aarch64"), "pi-b": node_platform("linux", "armv7l")}
    check = FleetPlatformCheck(lambda: nodes["pi-a"], lambda: nodes, Registry(["linux/arm64"]))

    assert check.problem("1.2.0", None) == "1.2.0 has no image for linux/arm/v7 (node pi-b); it offers linux/arm64"


def test_a_release_for_every_node_or_a_registry_that_does_not_say_passes():
    nodes = {"pi-a": node_platform("linux", "aarch64"), "pi-b": node_platform("linux", "armv7l")}
    assert FleetPlatformCheck(lambda: AMD64, lambda: nodes, Registry(["linux/arm64", "linux/arm/v7"])).problem(
        "1.2.0", None
    ) is None
    assert FleetPlatformCheck(lambda: AMD64, lambda: nodes, Registry(None)).problem("1.2.0", None) is None
