"""Which version a CI run releases: a pure decision over the registry's tags and commit messages.

* a pushed git tag ``vX.Y.Z`` releases exactly ``X.Y.Z``, and fails if that version is already tagged;
* no release in the registry yet: ``CI_INITIAL_VERSION``;
* otherwise the highest release bumped by the commits since it (Conventional Commits as
  semantic-release reads them: ``feat:`` → minor, ``!`` or a ``BREAKING CHANGE:`` footer → major,
  anything else → patch; a revert and the commit it reverts both in the range count for nothing).

``v1.2.3`` and ``1.2.3`` are the same version: either spelling in the registry takes the version,
and the highest of all decides the next one. The tag is spelled like the highest existing release
(``CI_TAG_STYLE=auto``), or as ``CI_TAG_STYLE`` says. A tag in the registry is never overwritten.
The pipeline gathers the inputs (tags from the registry, commits from git since the commit in the
previous image's ``org.opencontainers.image.revision`` label) and checks the tags again just before
pushing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from ci_agent.errors import CiError
from shared.versions import Commit, bump, bump_kind, highest, highest_tag, parse_version, tags_of

TagStyle = Literal["auto", "plain", "v"]


class VersionTaken(CiError):
    """The version a run would release is already a tag in the registry."""

    def __init__(self, version: str, origin: str = "", existing: str | None = None) -> None:
        what = f"{version} {origin}" if origin else version
        spelled = f" (as {existing})" if existing is not None and existing != version else ""
        super().__init__(f"version {what} already exists in the registry{spelled}; tags are never overwritten")
        self.version = version


def tag_prefix(existing_tags: Iterable[str], style: TagStyle) -> str:
    """``"v"`` or ``""``: the setting, or with ``auto`` the spelling of the highest release (plain when none)."""
    if style != "auto":
        return "v" if style == "v" else ""
    top = highest_tag(existing_tags)
    return "v" if top is not None and top.startswith("v") else ""


def taken_by(tag: str, existing_tags: Iterable[str]) -> str | None:
    """The existing tag that already names ``tag``'s version in either spelling, or None."""
    clashes = tags_of(tag, existing_tags) if parse_version(tag) is not None else []
    return clashes[0] if clashes else None


def next_version(
    existing_tags: Iterable[str],
    messages: Iterable[Commit | str],
    *,
    initial: str,
    git_tag_version: str | None = None,
    tag_style: TagStyle = "auto",
) -> str:
    """The tag to release (``1.2.4`` or ``v1.2.4``); ``VersionTaken`` when its version is already tagged."""
    tags = set(existing_tags)
    for name, value in (("git tag version", git_tag_version), ("initial version", initial)):
        if value is not None and (parse_version(value) is None or value.startswith("v")):
            raise ValueError(f"{name} {value!r} is not X.Y.Z")
    prefix = tag_prefix(tags, tag_style)
    if git_tag_version is not None:
        candidate = prefix + git_tag_version
        origin = f"(from git tag v{git_tag_version})"
    else:
        previous = highest(tags)
        candidate = prefix + (initial if previous is None else str(bump(previous, bump_kind(messages))))
        origin = ""
    existing = taken_by(candidate, tags)
    if existing is not None:
        raise VersionTaken(candidate, origin, existing)
    return candidate


def should_move_latest(version: str, existing_tags: Iterable[str]) -> bool:
    """Whether ``latest`` should point at ``version``: only when nothing higher was released before.

    A git tag ``v1.4.1`` pushed after ``2.0.0`` is a back-port; ``latest`` stays on ``2.0.0``.
    """
    released = parse_version(version)
    previous = highest(existing_tags)
    return released is not None and (previous is None or released >= previous)
