"""Which version a CI run releases: a pure decision over the registry's tags and commit messages.

* a pushed git tag ``vX.Y.Z`` releases exactly ``X.Y.Z``, and fails if that tag already exists;
* no release in the registry yet: ``CI_INITIAL_VERSION``;
* otherwise the highest release bumped by the commits since it (Conventional Commits: ``feat:`` →
  minor, ``!`` or ``BREAKING CHANGE`` → major, anything else → patch).

A tag in the registry is never overwritten. The pipeline gathers the inputs (tags from the
registry, messages from git since the commit in the previous image's
``org.opencontainers.image.revision`` label) and checks the tags again just before pushing.
"""

from __future__ import annotations

from collections.abc import Iterable

from ci_agent.errors import CiError
from shared.versions import bump, bump_kind, highest, parse_version


class VersionTaken(CiError):
    """The version a run would release is already a tag in the registry."""

    def __init__(self, version: str, origin: str = "") -> None:
        what = f"{version} {origin}" if origin else version
        super().__init__(f"version {what} already exists in the registry; tags are never overwritten")
        self.version = version


def next_version(
    existing_tags: Iterable[str], messages: Iterable[str], *, initial: str, git_tag_version: str | None = None
) -> str:
    """The version to release; raises ``VersionTaken`` when it would overwrite an existing tag."""
    tags = set(existing_tags)
    if git_tag_version is not None:
        if parse_version(git_tag_version) is None:
            raise ValueError(f"git tag version {git_tag_version!r} is not X.Y.Z")
        if git_tag_version in tags:
            raise VersionTaken(git_tag_version, f"(from git tag v{git_tag_version})")
        return git_tag_version
    previous = highest(tags)
    if previous is None:
        if parse_version(initial) is None:
            raise ValueError(f"initial version {initial!r} is not X.Y.Z")
        candidate = initial
    else:
        candidate = str(bump(previous, bump_kind(messages)))
    if candidate in tags:
        raise VersionTaken(candidate)
    return candidate


def should_move_latest(version: str, existing_tags: Iterable[str]) -> bool:
    """Whether ``latest`` should point at ``version``: only when nothing higher was released before.

    A git tag ``v1.4.1`` pushed after ``2.0.0`` is a back-port; ``latest`` stays on ``2.0.0``.
    """
    released = parse_version(version)
    previous = highest(existing_tags)
    return released is not None and (previous is None or released >= previous)
