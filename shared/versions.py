"""Semantic versions of image tags: parsing, ordering, bumping, constraints.

A tag is a version when it is exactly ``MAJOR.MINOR.PATCH`` or ``MAJOR.MINOR.PATCH-PRERELEASE``
(semver.org 2.0.0, no leading zeros), optionally spelled with a leading ``v``: ``v1.2.3`` and
``1.2.3`` name the same version, as in node-semver. ``1.2``, ``latest``, ``sha-abc``, ``01.2.3``
are not versions, and neither is build metadata (``1.2.3+build``): Docker tags cannot contain
``+``, and build metadata does not take part in ordering, so two such tags could not be told apart.

Tags whose pre-release part names a platform (``1.1.0-arm64``, ``1.1.0-linux-amd64``, ``2.0.0-armv7``)
are not versions either: they are one architecture's build of a release, not a release to deploy
or to bump from, and deploying one on the wrong machine fails (see ``PLATFORM_WORDS``).

Constraints (``CD_VERSION_CONSTRAINT``) are comma-separated comparisons, all of which must hold::

    ">=1.0.0, <2.0.0"   "!=1.4.2"   "==1.2.3"   "1.2.3" (same as ==)
    "^1.2.3" -> >=1.2.3,<2.0.0      "^0.2.3" -> >=0.2.3,<0.3.0     "^0.0.3" -> >=0.0.3,<0.0.4
    "~1.2.3" -> >=1.2.3,<1.3.0      "~1.2"   -> >=1.2.0,<1.3.0     "~1"     -> >=1.0.0,<2.0.0

Pre-releases follow semver precedence (``2.0.0-rc.1 < 2.0.0``) with one exception taken from PEP 440:
an exclusive upper bound ``<X.Y.Z`` (also the one implied by ``^`` and ``~``) does not admit
pre-releases of ``X.Y.Z`` itself, because ``<2.0.0`` means "not 2.x" to the person who wrote it.
tests/fixtures/versions/ holds node-semver's answers and the deliberate differences from them.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import semver

BumpKind = Literal["major", "minor", "patch"]

_IDENT = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION = re.compile(
    rf"(?P<prefix>v?)(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?",
    re.ASCII,
)
_PARTIAL = re.compile(r"v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?", re.ASCII)


# Operating systems and architectures as image platforms and release assets spell them.
PLATFORM_WORDS = frozenset(
    {
        "linux", "windows", "darwin", "freebsd", "amd64", "x86", "x64", "i386", "i686", "386",
        "arm", "armel", "armhf", "armv5", "armv6", "armv7", "armv7l", "armv8", "arm32v5", "arm32v6",
        "arm32v7", "arm64", "arm64v8", "aarch64", "ppc64", "ppc64le", "s390x", "riscv64", "mips64le",
        "mips64", "mipsle", "loong64",
    }
)
_WORDS = re.compile(r"[.-]")


def parse_version(tag: str) -> semver.Version | None:
    """The version a tag names (``v1.2.3`` and ``1.2.3`` alike), or None when the tag is not one."""
    match = _VERSION.fullmatch(tag)
    if match is None or is_platform_tag(tag):
        return None
    return semver.Version(
        int(match["major"]), int(match["minor"]), int(match["patch"]), prerelease=match["pre"]
    )


def is_platform_tag(tag: str) -> bool:
    """Whether ``tag`` is a version with a platform suffix, like ``1.1.0-arm64`` or ``v2.0.0-linux-amd64``."""
    match = _VERSION.fullmatch(tag)
    if match is None or match["pre"] is None:
        return False
    return any(word.lower() in PLATFORM_WORDS for word in _WORDS.split(match["pre"]))


def release_tags(tags: Iterable[str], *, allow_prerelease: bool = False) -> list[tuple[semver.Version, str]]:
    """``(version, tag)`` for the versions among ``tags``, sorted ascending, one tag per version.

    When a version is tagged in both spellings the plain one (``1.2.3``) stands for it.
    """
    found: dict[semver.Version, str] = {}
    for tag in tags:
        version = parse_version(tag)
        if version is None or (version.prerelease is not None and not allow_prerelease):
            continue
        if version not in found or found[version].startswith("v"):
            found[version] = tag
    return sorted(found.items())


def release_versions(tags: Iterable[str], *, allow_prerelease: bool = False) -> list[semver.Version]:
    """The versions among ``tags``, without duplicates, sorted ascending; pre-releases only if allowed."""
    return [version for version, _ in release_tags(tags, allow_prerelease=allow_prerelease)]


def highest(tags: Iterable[str], *, allow_prerelease: bool = False) -> semver.Version | None:
    versions = release_versions(tags, allow_prerelease=allow_prerelease)
    return versions[-1] if versions else None


def highest_tag(tags: Iterable[str], *, allow_prerelease: bool = False) -> str | None:
    """The tag of the highest version among ``tags``, spelled as in the registry (``v2.0.0`` stays so)."""
    found = release_tags(tags, allow_prerelease=allow_prerelease)
    return found[-1][1] if found else None


def tags_of(version: semver.Version | str, tags: Iterable[str]) -> list[str]:
    """The tags among ``tags`` that name ``version``, in either spelling (``1.2.3`` and ``v1.2.3``)."""
    wanted = parse_version(version) if isinstance(version, str) else version
    return [] if wanted is None else [tag for tag in tags if parse_version(tag) == wanted]


def bump(version: semver.Version, kind: BumpKind) -> semver.Version:
    """The next release after ``version``.

    A pre-release is finished rather than skipped, as npm's ``semver.inc`` does: the patch after
    ``1.2.3-rc.1`` is ``1.2.3``, the minor after ``1.3.0-rc.1`` is ``1.3.0``, the major after
    ``2.0.0-rc.1`` is ``2.0.0``. Build metadata is dropped.
    """
    major, minor, patch = version.major, version.minor, version.patch
    pre = version.prerelease is not None
    if kind == "major":
        if pre and minor == 0 and patch == 0:
            return semver.Version(major, 0, 0)
        return semver.Version(major + 1, 0, 0)
    if kind == "minor":
        if pre and patch == 0:
            return semver.Version(major, minor, 0)
        return semver.Version(major, minor + 1, 0)
    if kind == "patch":
        return semver.Version(major, minor, patch if pre else patch + 1)
    raise ValueError(f"unknown bump kind {kind!r}; expected 'major', 'minor' or 'patch'")


# How a commit asks for a bump, as semantic-release's commit analyzer with the conventionalcommits preset
# reads it (tests/fixtures/versions/commit-analyzer.json), except for case: the Conventional Commits
# spec makes the type case-insensitive (``Feat:`` is a feature) and the ``BREAKING CHANGE`` token
# upper case only (``breaking change:`` is prose).
_HEADER = re.compile(r"(?P<type>[A-Za-z0-9_]*)(?:\((?P<scope>.*)\))?(?P<bang>!)?: (?P<subject>.*)")
# A footer line anywhere after the header, indented or a squash merge's ``* `` bullet; the text may
# follow on the next line.
_BREAKING_NOTE = re.compile(r"[\s|*]*(?:BREAKING CHANGE|BREAKING-CHANGE)[:\s]")
# git's default revert message (``Revert "feat: x"`` … ``This reverts commit SHA.``) and the conventional
# ``revert: feat: x`` spelling. The analyzer reads it with one regex whose lazy match backtracks
# (cubic time on a message of spaces); this scan finds the same header and sha in linear time.
_REVERT_START = re.compile(r"(?:Revert|revert:)\s", re.IGNORECASE)
_REVERTS_COMMIT = re.compile(r"This reverts commit ", re.IGNORECASE)
_SHA_AND_DOT = re.compile(r"[A-Za-z0-9_]*\.")
_NEWLINE = re.compile(r"\r?\n")
_RANK: dict[BumpKind, int] = {"patch": 0, "minor": 1, "major": 2}


@dataclass(frozen=True)
class Commit:
    """A commit in the range being released; ``sha`` lets a revert cancel the commit it reverts."""

    sha: str
    message: str

    @property
    def lines(self) -> list[str]:
        text = self.message.strip("\r\n")
        return _NEWLINE.split(text) if text else []

    @property
    def header(self) -> str:
        lines = self.lines
        return lines[0] if lines else ""

    def reverts(self) -> tuple[str, str] | None:
        """``(header, sha)`` of the commit this one reverts, or None when it is no revert."""
        start = _REVERT_START.match(self.message)
        if start is None:
            return None
        after = start.end()
        begin = after + 1 if self.message.startswith('"', after) else after
        fallback = None
        for phrase in _REVERTS_COMMIT.finditer(self.message, after + 1):
            sha = _SHA_AND_DOT.match(self.message, phrase.end())
            if sha is None:
                continue
            if phrase.start() == begin:
                # The header has at least one character; only when nothing else matches is the
                # opening quote itself the header.
                fallback = fallback or ('"', sha.group()[:-1])
                continue
            header = self.message[begin : phrase.start()].rstrip()
            header = header.removesuffix('"') if len(header) > 1 else header
            return header.strip(), sha.group()[:-1]
        return fallback


def commit_bump_kind(message: str) -> BumpKind:
    """The bump one commit message asks for; messages that are not Conventional Commits are patches.

    Beyond the analyzer, a squash merge's ``* type: …`` bullets (GitHub lists the squashed commits so)
    count as the commits they were: the analyzer reads only the title, and would release a squashed
    ``feat!:`` as a patch.
    """
    lines = Commit("", message).lines
    if not lines:
        return "patch"
    headers = [_HEADER.fullmatch(lines[0])]
    headers += [_HEADER.fullmatch(line[2:]) for line in lines[1:] if line.startswith("* ")]
    found = [header for header in headers if header is not None]
    if any(header["bang"] for header in found) or any(_BREAKING_NOTE.match(line) for line in lines[1:]):
        return "major"
    if any(header["type"].lower() == "feat" for header in found):
        return "minor"
    return "patch"


def unreverted(commits: Iterable[Commit | str]) -> list[Commit]:
    """The commits (newest first, as ``git log`` lists them) minus each revert and the commit it reverts.

    A revert cancels a commit only when both are in the range and the revert names the commit's full
    sha and header, as semantic-release's filter does; a revert of something older stays (a patch).
    """
    kept: list[Commit] = []
    waiting: list[tuple[Commit, tuple[str, str]]] = []
    for item in commits:
        commit = item if isinstance(item, Commit) else Commit("", item)
        if not commit.message.strip():
            continue
        key = (commit.header.strip(), commit.sha)
        match = next((i for i, (_, target) in enumerate(waiting) if commit.sha and target == key), None)
        if match is not None:
            del waiting[match]
            continue
        reverted = commit.reverts()
        if reverted is not None:
            waiting.append((commit, reverted))
        else:
            kept.append(commit)
    return kept + [commit for commit, _ in waiting]


def bump_kind(commits: Iterable[Commit | str]) -> BumpKind:
    """The largest bump the commits ask for (``patch`` when there are none); reverted pairs do not count.

    ``commits`` are newest first; a plain message has no sha, so no revert can cancel it.
    """
    kind: BumpKind = "patch"
    for commit in unreverted(commits):
        candidate = commit_bump_kind(commit.message)
        if _RANK[candidate] > _RANK[kind]:
            kind = candidate
            if kind == "major":
                break
    return kind


_OPERATORS: dict[str, Callable[[semver.Version, semver.Version], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "=": operator.eq,
    "!=": operator.ne,
}
_COMPARISON = re.compile(r"(?P<op><=|>=|==|!=|<|>|=|\^|~)?\s*(?P<version>\S*)")


@dataclass(frozen=True)
class Comparison:
    op: str
    version: semver.Version

    def allows(self, version: semver.Version) -> bool:
        if (
            self.op == "<"
            and self.version.prerelease is None
            and version.prerelease is not None
            and (version.major, version.minor, version.patch)
            == (self.version.major, self.version.minor, self.version.patch)
        ):
            return False
        return _OPERATORS[self.op](version, self.version)

    def __str__(self) -> str:
        return f"{self.op}{self.version}"


@dataclass(frozen=True)
class Constraint:
    """Comparisons that must all hold; build it with :func:`parse_constraint`."""

    text: str
    comparisons: tuple[Comparison, ...]

    def allows(self, version: semver.Version | str) -> bool:
        """Whether ``version`` satisfies every comparison; a tag that is not a version never does."""
        if isinstance(version, str):
            parsed = parse_version(version)
            if parsed is None:
                return False
            version = parsed
        return all(comparison.allows(version) for comparison in self.comparisons)

    def __str__(self) -> str:
        return self.text


def parse_constraint(text: str) -> Constraint:
    """Parse ``">=1.0.0,<2.0.0"``-style text; ValueError names the part that is wrong."""
    if not text.strip():
        raise ValueError("empty version constraint; expected comparisons like '>=1.0.0,<2.0.0'")
    comparisons: list[Comparison] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise ValueError(f"empty part in version constraint {text!r}; parts are separated by single commas")
        comparisons.extend(_parse_part(part, text))
    return Constraint(text=text.strip(), comparisons=tuple(comparisons))


def _parse_part(part: str, text: str) -> list[Comparison]:
    match = _COMPARISON.fullmatch(part)
    if match is None or not match["version"]:
        raise ValueError(
            f"bad version constraint {part!r} in {text!r}; expected an operator (<, <=, >, >=, ==, !=, ^, ~) "
            "and a version like 1.2.3, with parts separated by commas"
        )
    op = match["op"] or "=="
    if op in ("^", "~"):
        return _parse_range(op, match["version"], part, text)
    version = parse_version(match["version"])
    if version is None:
        raise ValueError(
            f"bad version {match['version']!r} in constraint {part!r} of {text!r}; "
            "expected MAJOR.MINOR.PATCH like 1.2.3 (or 1.2.3-rc.1), with parts separated by commas"
        )
    return [Comparison("==" if op == "=" else op, version)]


def _parse_range(op: str, raw: str, part: str, text: str) -> list[Comparison]:
    lower = parse_version(raw)
    given = 3
    if lower is None:
        partial = _PARTIAL.fullmatch(raw)
        if partial is None:
            raise ValueError(
                f"bad version {raw!r} in constraint {part!r} of {text!r}; expected 1, 1.2 or 1.2.3 after {op!r}"
            )
        numbers = [int(group) for group in partial.groups() if group is not None]
        given = len(numbers)
        lower = semver.Version(*numbers, *[0] * (3 - given))
    major, minor, patch = lower.major, lower.minor, lower.patch
    if op == "~":
        upper = semver.Version(major + 1, 0, 0) if given == 1 else semver.Version(major, minor + 1, 0)
    elif major > 0 or given == 1:
        upper = semver.Version(major + 1, 0, 0)
    elif minor > 0 or given == 2:
        upper = semver.Version(0, minor + 1, 0)
    else:
        upper = semver.Version(0, 0, patch + 1)
    return [Comparison(">=", lower), Comparison("<", upper)]
