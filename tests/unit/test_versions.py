from __future__ import annotations

import pytest
import semver
from hypothesis import assume, given
from hypothesis import strategies as st

from shared.versions import (
    BumpKind,
    bump,
    bump_kind,
    commit_bump_kind,
    highest,
    highest_tag,
    is_platform_tag,
    parse_constraint,
    parse_version,
    release_versions,
    tags_of,
)

V = semver.Version.parse


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("1.2.3", V("1.2.3")),
        ("0.0.0", V("0.0.0")),
        ("10.20.30", V("10.20.30")),
        ("1.2.3-rc.1", V("1.2.3-rc.1")),
        ("1.0.0-alpha", V("1.0.0-alpha")),
        ("1.0.0-0.3.7", V("1.0.0-0.3.7")),
        ("1.0.0-x-y-z.--", V("1.0.0-x-y-z.--")),
        ("1.0.0-alpha.01a", V("1.0.0-alpha.01a")),
        ("v1.2.3", V("1.2.3")),
        ("v1.2.3-rc.1", V("1.2.3-rc.1")),
        ("1.0.0-armada", V("1.0.0-armada")),
    ],
)
def test_parse_version_accepts_strict_semver(tag: str, expected: semver.Version) -> None:
    assert parse_version(tag) == expected


@pytest.mark.parametrize(
    "tag",
    [
        "V1.2.3",
        "vv1.2.3",
        "v 1.2.3",
        "=1.2.3",
        "v1",
        "1.2",
        "1",
        "latest",
        "sha-abc1234",
        "01.2.3",
        "1.02.3",
        "1.2.03",
        "1.2.3+build",
        "1.2.3-rc.1+build.5",
        "1.2.3-01",
        "1.2.3-",
        "1.2.3-rc..1",
        " 1.2.3",
        "1.2.3\n",
        "1.2.3.4",
        "",
        "-1.2.3",
        "1.2.3-rc_1",
        "１.2.3",
        # one platform's build of a release, never a release of its own
        "1.1.0-arm64",
        "1.1.0-amd64",
        "v1.1.0-armv7",
        "1.1.0-linux-amd64",
        "1.1.0-rc.1-arm64",
        "2.0.0-linux.arm64.v8",
        "1.0.0-ARM64",
        "1.0.0-aarch64",
        "1.0.0-s390x",
        "1.0.0-386",
    ],
)
def test_parse_version_rejects_everything_else(tag: str) -> None:
    assert parse_version(tag) is None


def test_release_versions_sorted_without_prereleases_or_junk() -> None:
    tags = ["latest", "1.10.0", "1.2.0", "v9.9.9", "1.9.0", "2.0.0-rc.1", "sha-1", "0.1.0", "v1.2.0", "10.0.0-arm64"]

    assert release_versions(tags) == [V("0.1.0"), V("1.2.0"), V("1.9.0"), V("1.10.0"), V("9.9.9")]


def test_release_versions_with_prereleases_use_semver_precedence() -> None:
    tags = ["2.0.0", "2.0.0-rc.2", "2.0.0-rc.10", "2.0.0-beta", "1.0.0"]

    assert [str(v) for v in release_versions(tags, allow_prerelease=True)] == [
        "1.0.0",
        "2.0.0-beta",
        "2.0.0-rc.2",
        "2.0.0-rc.10",
        "2.0.0",
    ]


@pytest.mark.parametrize(
    ("tags", "allow_prerelease", "expected"),
    [
        (["1.2.3", "1.10.0", "1.9.9"], False, "1.10.0"),
        (["1.2.3", "2.0.0-rc.1"], False, "1.2.3"),
        (["1.2.3", "2.0.0-rc.1"], True, "2.0.0-rc.1"),
        (["latest", "v3.0.0"], False, "3.0.0"),
        (["2.0.0", "v3.0.0-arm64", "3.0.0-amd64"], True, "2.0.0"),
        ([], False, None),
        (["2.0.0-rc.1"], False, None),
    ],
)
def test_highest(tags: list[str], allow_prerelease: bool, expected: str | None) -> None:
    result = highest(tags, allow_prerelease=allow_prerelease)

    assert (None if result is None else str(result)) == expected


@pytest.mark.parametrize(
    ("version", "kind", "expected"),
    [
        ("1.2.3", "patch", "1.2.4"),
        ("1.2.3", "minor", "1.3.0"),
        ("1.2.3", "major", "2.0.0"),
        ("0.1.0", "patch", "0.1.1"),
        ("0.9.9", "major", "1.0.0"),
        ("1.2.3-rc.1", "patch", "1.2.3"),
        ("1.2.3-rc.1", "minor", "1.3.0"),
        ("1.3.0-rc.1", "minor", "1.3.0"),
        ("1.3.0-rc.1", "patch", "1.3.0"),
        ("2.0.0-rc.1", "major", "2.0.0"),
        ("2.1.0-rc.1", "major", "3.0.0"),
        ("1.2.3+build.7", "patch", "1.2.4"),
    ],
)
def test_bump(version: str, kind: BumpKind, expected: str) -> None:
    assert str(bump(V(version), kind)) == expected


def test_bump_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="'huge'"):
        bump(V("1.0.0"), "huge")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("fix: handle empty tags", "patch"),
        ("feat: add rollback", "minor"),
        ("feat(cd): add rollback", "minor"),
        ("FEAT: shouting still counts", "minor"),
        ("Feat(API): mixed case type", "minor"),
        ("feat!: drop python 3.10", "major"),
        ("fix(api)!: rename endpoint", "major"),
        ("chore!: drop support", "major"),
        ("refactor: x\n\nBREAKING CHANGE: config renamed", "major"),
        ("fix: x\n\nsome body\n\nBREAKING-CHANGE: config renamed", "major"),
        ("fix: x\r\n\r\nBREAKING CHANGE: windows line endings", "major"),
        ("update readme\n\nBREAKING CHANGE: not conventional header, footer still counts", "major"),
        ("fix: x\n\nbreaking change: lower case is not the token", "patch"),
        ("fix: x\n\nBreaking Change: mixed case is not the token", "patch"),
        ("fix: x\n\n  BREAKING CHANGE: indented footer", "major"),
        ("fix: x\n\nBREAKING CHANGE:\ntext on the next line", "major"),
        ("Squash (#12)\n\n* fix: a\n\n* BREAKING CHANGE: a squash merge's bullet", "major"),
        ("fix: x\n\nBREAKING CHANGES: the plural is not the token", "patch"),
        ("fix: mentions BREAKING CHANGE: inline", "patch"),
        ("BREAKING CHANGE: in the header is not a footer", "patch"),
        ("feat:no space after colon", "patch"),
        ("feat:", "patch"),
        ("feature: not the feat type", "patch"),
        ("feat(scope: unbalanced", "patch"),
        ("feat (scope): space before scope", "patch"),
        ("Merge pull request #4 from o/feat: thing", "patch"),
        ("Add feat: later in the line", "patch"),
        ("update docs", "patch"),
        ("", "patch"),
        ("\n\nfeat: leading blank lines are ignored", "minor"),
        ("feat: x\n\nRefs: #12", "minor"),
    ],
)
def test_commit_bump_kind(message: str, expected: BumpKind) -> None:
    assert commit_bump_kind(message) == expected


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([], "patch"),
        (["fix: a", "docs: b"], "patch"),
        (["fix: a", "feat: b", "fix: c"], "minor"),
        (["feat: a", "fix!: b", "feat: c"], "major"),
        (["chore: a", "fix: b\n\nBREAKING CHANGE: c"], "major"),
    ],
)
def test_bump_kind_takes_the_largest(messages: list[str], expected: BumpKind) -> None:
    assert bump_kind(messages) == expected


def test_bump_kind_accepts_any_iterable() -> None:
    assert bump_kind(m for m in ["fix: a", "feat: b"]) == "minor"


@pytest.mark.parametrize(
    ("text", "allowed", "refused"),
    [
        ("<2.0.0", ["1.9.9", "0.0.1", "1.0.0-rc.1"], ["2.0.0", "2.0.0-rc.1", "2.0.1", "3.0.0"]),
        (">=1.0.0,<2.0.0", ["1.0.0", "1.99.0"], ["0.9.9", "1.0.0-rc.1", "2.0.0", "2.0.0-rc.1"]),
        (">= 1.0.0 , < 2.0.0", ["1.5.0"], ["2.0.0"]),
        (">1.2.3", ["1.2.4", "2.0.0"], ["1.2.3", "1.2.3-rc.1"]),
        ("<=1.2.3", ["1.2.3", "1.2.3-rc.1"], ["1.2.4"]),
        ("==1.2.3", ["1.2.3"], ["1.2.4", "1.2.3-rc.1"]),
        ("=1.2.3", ["1.2.3"], ["1.2.4"]),
        ("1.2.3", ["1.2.3"], ["1.2.4"]),
        ("!=1.4.2", ["1.4.1", "1.4.3"], ["1.4.2"]),
        (">=1.0.0,!=1.4.2,<2.0.0", ["1.4.1"], ["1.4.2", "2.0.0"]),
        ("<2.0.0-rc.2", ["2.0.0-rc.1", "1.0.0"], ["2.0.0-rc.2", "2.0.0"]),
        ("^1.2.3", ["1.2.3", "1.9.0"], ["1.2.2", "2.0.0", "2.0.0-rc.1"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "1.0.0"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4", "0.1.0"]),
        ("^1.2", ["1.2.0", "1.9.9"], ["1.1.9", "2.0.0"]),
        ("^1", ["1.0.0", "1.9.9"], ["0.9.9", "2.0.0"]),
        ("^0", ["0.0.0", "0.9.9"], ["1.0.0"]),
        ("^0.0", ["0.0.9"], ["0.1.0"]),
        ("~1.2.3", ["1.2.3", "1.2.9"], ["1.2.2", "1.3.0"]),
        ("~1.2", ["1.2.0", "1.2.9"], ["1.3.0", "1.1.0"]),
        ("~1", ["1.0.0", "1.9.0"], ["2.0.0"]),
        ("<v2.0.0", ["1.9.9"], ["2.0.0"]),
        ("^v1.2", ["1.2.0"], ["2.0.0"]),
    ],
)
def test_constraint_allows(text: str, allowed: list[str], refused: list[str]) -> None:
    constraint = parse_constraint(text)

    assert [v for v in allowed if not constraint.allows(V(v))] == []
    assert [v for v in refused if constraint.allows(V(v))] == []


def test_constraint_allows_tags_as_text() -> None:
    constraint = parse_constraint("<2.0.0")

    assert constraint.allows("1.0.0")
    assert not constraint.allows("2.0.0")
    assert not constraint.allows("latest")


def test_constraint_str_is_the_text() -> None:
    assert str(parse_constraint(" >=1.0.0,<2.0.0 ")) == ">=1.0.0,<2.0.0"


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("<2", "'2'"),
        (">=1.0.0,,<2.0.0", "empty part"),
        (">=1.0.0,", "empty part"),
        (">=1.0.0 <2.0.0", "'>=1.0.0 <2.0.0'"),
        ("=>1.0.0", "'=>1.0.0'"),
        ("<<1.0.0", "'<<1.0.0'"),
        ("latest", "'latest'"),
        ("1.x", "'1.x'"),
        (">=1.0.0,<2.0.0+build", "'2.0.0+build'"),
        ("^V1", "'V1'"),
        ("~1.2.3.4", "'1.2.3.4'"),
        ("<", "'<'"),
    ],
)
def test_parse_constraint_errors_quote_the_bad_part(text: str, quoted: str) -> None:
    with pytest.raises(ValueError, match="constraint") as info:
        parse_constraint(text)

    assert quoted in str(info.value)


_numbers = st.integers(min_value=0, max_value=10**6)
_identifiers = st.one_of(
    st.integers(min_value=0, max_value=999).map(str),
    st.from_regex(r"[0-9]*[A-Za-z-][0-9A-Za-z-]*", fullmatch=True).filter(lambda s: len(s) <= 12),
)
_versions = st.builds(
    semver.Version,
    _numbers,
    _numbers,
    _numbers,
    st.one_of(st.none(), st.lists(_identifiers, min_size=1, max_size=3).map(".".join)),
)


@given(_versions)
def test_parse_version_reads_back_what_semver_writes(version: semver.Version) -> None:
    assume(not is_platform_tag(str(version)))
    assert parse_version(str(version)) == version


@given(_versions, st.sampled_from(["major", "minor", "patch"]))
def test_bump_always_moves_forward_to_a_release(version: semver.Version, kind: BumpKind) -> None:
    bumped = bump(version, kind)

    assert bumped > version
    assert bumped.prerelease is None


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["v2.0.0", "latest"], "v2.0.0"),
        (["1.2.0", "v1.3.0"], "v1.3.0"),
        (["v1.3.0", "1.3.0", "1.2.0"], "1.3.0"),
        (["1.3.0", "v1.3.0"], "1.3.0"),
        (["v1.9.0", "1.10.0"], "1.10.0"),
        (["2.0.0-arm64", "1.0.0"], "1.0.0"),
        (["latest"], None),
    ],
)
def test_highest_tag_keeps_the_registry_spelling(tags: list[str], expected: str | None) -> None:
    assert highest_tag(tags) == expected


def test_tags_of_finds_both_spellings_and_nothing_else() -> None:
    tags = ["1.2.3", "v1.2.3", "1.2.3-rc.1", "1.2.3-arm64", "v1.2.4", "latest"]

    assert tags_of("1.2.3", tags) == ["1.2.3", "v1.2.3"]
    assert tags_of(V("1.2.4"), tags) == ["v1.2.4"]
    assert tags_of("latest", tags) == []


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("1.1.0-arm64", True),
        ("v1.1.0-linux-amd64", True),
        ("1.1.0-rc.1.armv7", True),
        ("1.1.0-rc.1", False),
        ("1.1.0-armada", False),
        ("1.1.0", False),
        ("arm64", False),
    ],
)
def test_is_platform_tag(tag: str, expected: bool) -> None:
    assert is_platform_tag(tag) is expected
