"""The release decision: registry tags + commit messages (+ a pushed git tag) -> the next version."""

from __future__ import annotations

import pytest

from ci_agent.versioning import TagStyle, VersionTaken, next_version, should_move_latest
from shared.versions import Commit


@pytest.mark.parametrize(
    ("tags", "messages", "git_tag", "expected"),
    [
        ([], [], None, "0.1.0"),
        (["latest", "sha-abc", "9.9.9-arm64"], ["feat: x"], None, "0.1.0"),
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
        # v-prefixed releases count, and the next release keeps their spelling
        (["v2.0.0", "latest"], ["fix: a"], None, "v2.0.1"),
        (["1.0.0", "v1.1.0"], ["feat: a"], None, "v1.2.0"),
        (["v1.9.0", "1.10.0"], [], None, "1.10.1"),
        (["v1.3.0", "1.3.0"], [], None, "1.3.1"),
        (["v1.0.0"], [], "1.4.1", "v1.4.1"),
        # platform builds are neither releases nor a spelling
        (["v1.0.0", "2.0.0-arm64"], [], None, "v1.0.1"),
        # the squash merge's bullet, an indented footer, the text on the next line
        (["1.2.3"], ["Rework (#12)\n\n* fix: a\n\n* BREAKING CHANGE: config renamed"], None, "2.0.0"),
        (["1.2.3"], ["fix: a\n\n  BREAKING CHANGE: config renamed"], None, "2.0.0"),
        (["1.2.3"], ["fix: a\n\nBREAKING CHANGE:\nconfig renamed"], None, "2.0.0"),
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


@pytest.mark.parametrize("bad", ["v1.0.0", "1.0", "latest", "1.0.0-arm64"])
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


FEAT = "a" * 40
FEAT_BANG = "b" * 40


def revert(sha: str, header: str) -> str:
    return f'Revert "{header}"\n\nThis reverts commit {sha}.'


@pytest.mark.parametrize(
    ("commits", "expected"),
    [
        ([Commit("c" * 40, revert(FEAT, "feat: login")), Commit(FEAT, "feat: login")], "1.2.4"),
        (
            [Commit("c" * 40, revert(FEAT_BANG, "feat!: drop v1 API")),
             Commit("d" * 40, "fix: typo"), Commit(FEAT_BANG, "feat!: drop v1 API")],
            "1.2.4",
        ),
        (
            [Commit("c" * 40, f"revert: feat: login\n\nThis reverts commit {FEAT}."), Commit(FEAT, "feat: login")],
            "1.2.4",
        ),
        # the reverted commit was released before this range: the revert is a patch, nothing cancels
        ([Commit("c" * 40, revert(FEAT, "feat: login")), Commit("d" * 40, "feat: b")], "1.3.0"),
        # a revert naming another commit cancels nothing
        ([Commit("c" * 40, revert("e" * 40, "feat: login")), Commit(FEAT, "feat: login")], "1.3.0"),
        # messages without shas (the webhook's list) cannot be matched: the feat still counts
        ([revert(FEAT, "feat: login"), "feat: login"], "1.3.0"),
    ],
)
def test_a_commit_and_its_revert_count_for_nothing(commits: list[Commit], expected: str) -> None:
    assert next_version(["1.2.3"], commits, initial="0.1.0") == expected


@pytest.mark.parametrize(
    ("tags", "style", "expected"),
    [
        ([], "auto", "0.1.0"),
        ([], "v", "v0.1.0"),
        (["v1.0.0"], "plain", "1.0.1"),
        (["1.0.0"], "v", "v1.0.1"),
        (["1.0.0"], "auto", "1.0.1"),
    ],
)
def test_tag_style_setting(tags: list[str], style: TagStyle, expected: str) -> None:
    assert next_version(tags, [], initial="0.1.0", tag_style=style) == expected


@pytest.mark.parametrize(
    ("tags", "style", "git_tag", "taken"),
    [
        (["1.0.0", "v1.0.1"], "plain", "1.0.1", "v1.0.1"),
        (["1.0.1", "v2.0.0"], "auto", "1.0.1", "1.0.1"),
        (["1.2.3"], "v", "1.2.3", "1.2.3"),
        (["v1.2.3", "2.0.0"], "plain", "1.2.3", "v1.2.3"),
    ],
)
def test_a_version_taken_in_either_spelling_is_never_released_again(
    tags: list[str], style: TagStyle, git_tag: str | None, taken: str
) -> None:
    with pytest.raises(VersionTaken, match=rf"\(as {taken}\); tags are never overwritten"):
        next_version(tags, [], initial="0.1.0", git_tag_version=git_tag, tag_style=style)


def test_latest_moves_only_forward_in_either_spelling() -> None:
    assert should_move_latest("v2.0.1", ["2.0.0"])
    assert not should_move_latest("1.4.1", ["v2.0.0"])
