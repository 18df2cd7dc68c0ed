"""Semantic versions of image tags: parsing, ordering, bumping, constraints.

Only tags that are exactly ``MAJOR.MINOR.PATCH`` or ``MAJOR.MINOR.PATCH-PRERELEASE`` (semver.org 2.0.0,
no leading zeros) count as versions. ``v1.2.3``, ``1.2``, ``latest``, ``sha-abc``, ``01.2.3`` do not, and
neither does build metadata (``1.2.3+build``): Docker tags cannot contain ``+``, and build metadata
does not take part in ordering, so two such tags could not be told apart.

Constraints (``CD_VERSION_CONSTRAINT``) are comma-separated comparisons, all of which must hold::

    ">=1.0.0, <2.0.0"   "!=1.4.2"   "==1.2.3"   "1.2.3" (same as ==)
    "^1.2.3" -> >=1.2.3,<2.0.0      "^0.2.3" -> >=0.2.3,<0.3.0     "^0.0.3" -> >=0.0.3,<0.0.4
    "~1.2.3" -> >=1.2.3,<1.3.0      "~1.2"   -> >=1.2.0,<1.3.0     "~1"     -> >=1.0.0,<2.0.0

Pre-releases follow semver precedence (``2.0.0-rc.1 < 2.0.0``) with one exception taken from PEP 440:
an exclusive upper bound ``<X.Y.Z`` (also the one implied by ``^`` and ``~``) does not admit
pre-releases of ``X.Y.Z`` itself, because ``<2.0.0`` means "not 2.x" to the person who wrote it.
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
    rf"(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?",
    re.ASCII,
)
_PARTIAL = re.compile(r"(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?", re.ASCII)


def parse_version(tag: str) -> semver.Version | None:
    """The version a tag names, or None when the tag is not a strict semver release/pre-release."""
    match = _VERSION.fullmatch(tag)
    if match is None:
        return None
    return semver.Version(
        int(match["major"]), int(match["minor"]), int(match["patch"]), prerelease=match["pre"]
    )


def release_versions(tags: Iterable[str], *, allow_prerelease: bool = False) -> list[semver.Version]:
    """The versions among ``tags``, without duplicates, sorted ascending; pre-releases only if allowed."""
    found: set[semver.Version] = set()
    for tag in tags:
        version = parse_version(tag)
        if version is not None and (allow_prerelease or version.prerelease is None):
            found.add(version)
    return sorted(found)


def highest(tags: Iterable[str], *, allow_prerelease: bool = False) -> semver.Version | None:
    versions = release_versions(tags, allow_prerelease=allow_prerelease)
    return versions[-1] if versions else None


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


# Conventional Commits 1.0.0: "type(scope)!: description"; the type is case-insensitive.
_HEADER = re.compile(r"(?P<type>[A-Za-z][A-Za-z0-9_-]*)(?:\([^()\r\n]*\))?(?P<bang>!)?: +\S")
# The breaking-change footer token must be upper case (spec item 16); BREAKING-CHANGE is a synonym.
_BREAKING_FOOTER = re.compile(r"BREAKING[ -]CHANGE: +\S")
_RANK: dict[BumpKind, int] = {"patch": 0, "minor": 1, "major": 2}


def commit_bump_kind(message: str) -> BumpKind:
    """The bump one commit message asks for; messages that are not Conventional Commits are patches."""
    lines = message.strip().splitlines()
    if not lines:
        return "patch"
    header = _HEADER.match(lines[0])
    if (header is not None and header["bang"]) or any(_BREAKING_FOOTER.match(line) for line in lines[1:]):
        return "major"
    if header is not None and header["type"].lower() == "feat":
        return "minor"
    return "patch"


def bump_kind(messages: Iterable[str]) -> BumpKind:
    """The largest bump any of the messages asks for (``patch`` when there are none)."""
    kind: BumpKind = "patch"
    for message in messages:
        candidate = commit_bump_kind(message)
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
