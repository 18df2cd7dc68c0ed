from __future__ import annotations

import pytest

from cd_agent.candidate import choose_candidate, newest_release
from shared.versions import parse_constraint

TAGS = ["latest", "sha-0a1b2c3", "0.9.0", "0.9.1", "1.0.0", "1.1.0-rc.1", "v2.0.0", "1.0.1"]


@pytest.mark.parametrize(
    ("tags", "deployed", "constraint", "quarantined", "prerelease", "expected"),
    [
        # from nothing: the newest release
        (TAGS, None, None, (), False, "1.0.1"),
        # strictly above the deployed version
        (TAGS, "1.0.0", None, (), False, "1.0.1"),
        (TAGS, "1.0.1", None, (), False, None),
        # the deployed version is newer than anything in the registry: never downgrade
        (TAGS, "3.0.0", None, (), False, None),
        # latest, sha-… and v-prefixed tags never count
        (["latest", "sha-abc", "v9.9.9"], None, None, (), False, None),
        (["latest"], "1.0.0", None, (), False, None),
        # pre-releases only when allowed
        (TAGS, "1.0.1", None, (), True, "1.1.0-rc.1"),
        (["1.0.0", "1.1.0-rc.1", "1.1.0-rc.2"], "1.1.0-rc.1", None, (), True, "1.1.0-rc.2"),
        (["1.0.0", "1.1.0-rc.1", "1.1.0"], "1.0.0", None, (), True, "1.1.0"),
        # inside the constraint
        (TAGS, None, "<1.0.0", (), False, "0.9.1"),
        (TAGS, "0.9.0", "<1.0.0", (), False, "0.9.1"),
        (TAGS, "0.9.1", "<1.0.0", (), False, None),
        (TAGS, None, ">=1.0.0,<1.0.1", (), False, "1.0.0"),
        # quarantined versions are skipped, the next best one above the deployed is taken
        (TAGS, "1.0.0", None, {"1.0.1"}, False, None),
        (TAGS, "0.9.0", None, {"1.0.1"}, False, "1.0.0"),
        (["1.0.0", "1.0.1", "1.0.2"], "1.0.0", None, {"1.0.1"}, False, "1.0.2"),
        # an adopted container of unknown version is replaced by the newest release
        (TAGS, "unknown", None, (), False, "1.0.1"),
        # no tags at all (a repository nobody pushed to yet)
        ([], None, None, (), False, None),
        # highest by semver precedence, not by string order or tag order
        (["1.10.0", "1.9.0", "1.2.0"], None, None, (), False, "1.10.0"),
    ],
)
def test_choose_candidate(tags, deployed, constraint, quarantined, prerelease, expected):
    parsed = parse_constraint(constraint) if constraint else None
    assert choose_candidate(tags, deployed, parsed, quarantined, prerelease) == expected


@pytest.mark.parametrize(
    ("tags", "constraint", "quarantined", "prerelease", "expected"),
    [
        (TAGS, None, (), False, "1.0.1"),
        (TAGS, "<1.0.0", (), False, "0.9.1"),
        (TAGS, None, {"1.0.1"}, False, "1.0.0"),
        (TAGS, None, (), True, "1.1.0-rc.1"),
        (["latest", "sha-1"], None, (), False, None),
        ([], None, (), False, None),
    ],
)
def test_newest_release(tags, constraint, quarantined, prerelease, expected):
    parsed = parse_constraint(constraint) if constraint else None
    assert newest_release(tags, parsed, quarantined, prerelease) == expected
