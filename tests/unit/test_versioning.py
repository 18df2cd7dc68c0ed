"""The release decision: registry tags + commit messages (+ a pushed git tag) -> the next version."""

from __future__ import annotations

import pytest

from ci_agent.versioning import VersionTaken, next_version, should_move_latest


@pytest.mark.parametrize(
    ("tags", "messages", "git_tag", "expected"),
    [
        ([], [], None, "0.1.0"),
        (["latest", "sha-abc", "v9.9.9"], ["feat: x"], None, "0.1.0"),
        (["0.1.0", "latest"], ["fix: y"], None, "0.1.1"),
        (["0.1.0", "0.1.1"], ["chore: tidy", "feat(ui): button"], None, "0.2.0"),
        (["0.2.3"], ["feat!: drop python 3.10"], None, "1.0.0"),
        (["1.2.3"], ["fix: a\n\nBREAKING CHANGE: config renamed"], None, "2.0.0"),
        (["1.2.3"], ["plain message"], None, "1.2.4"),
        (["1.2.3"], [], None, "1.2.4"),
        (["0.9.0", "0.10.0", "0.2.0"], [], None, "0.10.1"),
        (["1.0.0", "2.0.0-rc.1"], ["fix: z"], None, "1.0.1"),
        (["1.0.0"], ["fix: z"], "3.0.0", "3.0.0"),
        (["2.0.0"], [], "1.4.1", "1.4.1"),
        ([], [], "0.0.1", "0.0.1"),
    ],
)
def test_next_version(tags: list[str], messages: list[str], git_tag: str | None, expected: str) -> None:
    assert next_version(tags, messages, initial="0.1.0", git_tag_version=git_tag) == expected


def test_initial_version_is_configurable() -> None:
    assert next_version([], ["feat: x"], initial="1.0.0") == "1.0.0"


def test_a_git_tag_that_exists_in_the_registry_is_never_overwritten() -> None:
    with pytest.raises(VersionTaken, match=r"version 1\.0\.0 \(from git tag v1\.0\.0\) already exists") as caught:
        next_version(["1.0.0", "latest"], [], initial="0.1.0", git_tag_version="1.0.0")
    assert caught.value.version == "1.0.0"


@pytest.mark.parametrize("bad", ["v1.0.0", "1.0", "latest"])
def test_bad_versions_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        next_version([], [], initial=bad)
    with pytest.raises(ValueError):
        next_version([], [], initial="0.1.0", git_tag_version=bad)


@pytest.mark.parametrize(
    ("version", "tags", "expected"),
    [
        ("0.1.0", [], True),
        ("1.0.1", ["1.0.0", "latest"], True),
        ("1.4.1", ["2.0.0"], False),
        ("2.0.0", ["2.0.0-rc.1", "1.9.0"], True),
    ],
)
def test_latest_moves_only_forward(version: str, tags: list[str], expected: bool) -> None:
    assert should_move_latest(version, tags) is expected
