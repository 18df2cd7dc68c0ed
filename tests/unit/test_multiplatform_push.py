"""The push of a multi-platform release: the index is tagged, then the staging tags are removed if the
registry allows it; a registry that refuses deletion keeps them and the release stands."""

from __future__ import annotations

from collections.abc import Sequence

from loguru import logger

from ci_agent.multiplatform import MultiPlatform
from shared.errors import RegistryError
from shared.platforms import Platform, parse_platform
from shared.registry import DOCKER_MANIFEST, IndexEntry, parse_image_ref

PLATFORMS = [parse_platform("linux/amd64"), parse_platform("linux/arm64")]


class Registry:
    def __init__(self, refuse_delete: bool) -> None:
        self.refuse_delete = refuse_delete
        self.calls: list[tuple[str, object]] = []

    def manifest_digest(self, tag: str) -> str | None:
        return None

    def entry(self, digest: str, platform: Platform) -> IndexEntry:
        return IndexEntry(digest, 500, DOCKER_MANIFEST, platform)

    def put_index(self, tag: str, entries: Sequence[IndexEntry]) -> str:
        self.calls.append(("put_index", tag))
        return "sha256:" + "i" * 64

    def delete_tags(self, tags: Sequence[str], *, note: str) -> None:
        self.calls.append(("delete_tags", list(tags)))
        if self.refuse_delete:
            raise RegistryError("registry r: cannot delete: DELETE answered 405 (UNSUPPORTED)")


def push(refuse_delete: bool) -> tuple[Registry, str, list[str]]:
    registry = Registry(refuse_delete)
    lines: list[str] = []
    sink = logger.add(lines.append, format="{level} {message}")
    try:
        platforms = MultiPlatform(None, registry, parse_image_ref("r.example/o/app"), PLATFORMS)  # type: ignore[arg-type]
        index = platforms.push("1.2.0", True, lambda tag: "sha256:" + tag[-5:].ljust(64, "0"), logger)
    finally:
        logger.remove(sink)
    return registry, index, lines


def test_the_staging_tags_are_removed_after_the_index_is_tagged() -> None:
    registry, index, lines = push(refuse_delete=False)
    assert index == "sha256:" + "i" * 64
    assert registry.calls == [
        ("put_index", "1.2.0"), ("put_index", "latest"),
        ("delete_tags", ["ci-staging-linux-amd64", "ci-staging-linux-arm64"]),
    ]
    assert any("removed the staging tags" in line for line in lines)


def test_a_registry_that_refuses_deletion_keeps_the_staging_tags_and_the_release_stands() -> None:
    registry, index, lines = push(refuse_delete=True)
    assert index == "sha256:" + "i" * 64
    assert [name for name, _ in registry.calls] == ["put_index", "put_index", "delete_tags"]
    warning = next(line for line in lines if line.startswith("WARNING"))
    assert "ci-staging-linux-amd64, ci-staging-linux-arm64 stay in the registry" in warning
    assert "405" in warning
