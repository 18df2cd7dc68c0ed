"""Which tag to deploy: pure functions over the registry's tag list.

Only strict semver tags count (``latest``, ``sha-…``, ``v1.2.3`` never do; pre-releases only when
allowed). ``choose_candidate`` is what the watcher deploys on its own: the highest release above the
deployed one, inside the constraint, not quarantined. ``newest_release`` is what ``cd-agent deploy``
without a version means: the highest release inside the constraint, wherever the app is now.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import semver

from shared.versions import Constraint, parse_version, release_versions


def _eligible(
    tags: Iterable[str],
    constraint: Constraint | None,
    quarantined: Collection[str],
    allow_prerelease: bool,
) -> list[semver.Version]:
    versions = release_versions(tags, allow_prerelease=allow_prerelease)
    return [
        version
        for version in versions
        if str(version) not in quarantined and (constraint is None or constraint.allows(version))
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
    above = [version for version in eligible if current is None or version > current]
    return str(above[-1]) if above else None


def newest_release(
    tags: Iterable[str],
    constraint: Constraint | None = None,
    quarantined: Collection[str] = (),
    allow_prerelease: bool = False,
) -> str | None:
    """The highest release inside ``constraint`` and not quarantined, or None when there is none."""
    eligible = _eligible(tags, constraint, quarantined, allow_prerelease)
    return str(eligible[-1]) if eligible else None
