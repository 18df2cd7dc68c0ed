"""Which tag to deploy: pure functions over the registry's tag list.

A tag counts when it names a version: ``1.2.3`` or ``v1.2.3`` (the same version; when both exist the
plain one is deployed), pre-releases only when allowed. ``latest``, ``sha-…`` and platform builds
such as ``1.2.3-arm64`` never count. The answer is the tag as the registry spells it, so the pull
asks for a tag that exists. ``choose_candidate`` is what the watcher deploys on its own: the highest
release above the deployed one, inside the constraint, not quarantined. ``newest_release`` is what
``cd-agent deploy`` without a version means: the highest release inside the constraint, wherever the
app is now.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import semver

from shared.versions import Constraint, parse_version, release_tags


def _eligible(
    tags: Iterable[str],
    constraint: Constraint | None,
    quarantined: Collection[str],
    allow_prerelease: bool,
) -> list[tuple[semver.Version, str]]:
    # A quarantined v1.3.0 also holds back 1.3.0: the same release under another name.
    held = {version for version in map(parse_version, quarantined) if version is not None}
    return [
        (version, tag)
        for version, tag in release_tags(tags, allow_prerelease=allow_prerelease)
        if tag not in quarantined and version not in held and (constraint is None or constraint.allows(version))
    ]


def choose_candidate(
    tags: Iterable[str],
    deployed: str | None,
    constraint: Constraint | None = None,
    quarantined: Collection[str] = (),
    allow_prerelease: bool = False,
) -> str | None:
    """The tag the watcher should deploy now, or None when the deployed version is the best there is.

    A ``deployed`` version that is not semver (an adopted container of unknown version) is treated as
    "nothing deployed", so the newest release replaces it.
    """
    current = parse_version(deployed) if deployed is not None else None
    eligible = _eligible(tags, constraint, quarantined, allow_prerelease)
    above = [tag for version, tag in eligible if current is None or version > current]
    return above[-1] if above else None


def newest_release(
    tags: Iterable[str],
    constraint: Constraint | None = None,
    quarantined: Collection[str] = (),
    allow_prerelease: bool = False,
) -> str | None:
    """The highest release inside ``constraint`` and not quarantined, or None when there is none."""
    eligible = _eligible(tags, constraint, quarantined, allow_prerelease)
    return eligible[-1][1] if eligible else None
