from __future__ import annotations

import pytest

from cd_agent.candidate import choose_candidate, newest_release
from shared.versions import parse_constraint

TAGS = ["latest", "sha-0a1b2c3", "0.9.0", "0.9.1", "1.0.0", "1.1.0-rc.1", "v2.0.0", "1.0.1"]


@pytest.mark.parametrize(
    ("tags", "deployed", "constraint", "quarantined", "prerelease", "expected"),
    [
        # from nothing: the newest release
        (TAGS, None, None, (), False, "v2.0.0"),
        # strictly above the deployed version
        (TAGS, "1.0.0", None, (), False, "v2.0.0"),
        (TAGS, "v2.0.0", None, (), False, None),
        # the deployed version is newer than anything in the registry: never downgrade
        (TAGS, "3.0.0", None, (), False, None),
        # latest, sha-… and platform builds never count
        (["latest", "sha-abc", "9.9.9-arm64"], None, None, (), False, None),
        (["1.0.0", "1.1.0-arm64", "1.1.0-amd64", "v1.1.0-linux-armv7"], "1.0.0", None, (), True, None),
        # v-prefixed tags are versions, deployed by the tag the registry has
        (TAGS, "1.0.1", None, (), False, "v2.0.0"),
        (["v1.3.0", "1.2.0"], None, None, (), False, "v1.3.0"),
        (["v1.3.0", "1.2.0"], "1.2.0", None, (), False, "v1.3.0"),
        (["v1.3.0", "1.2.0"], "v1.3.0", None, (), False, None),
        (["v1.3.0", "1.3.0"], "1.2.0", None, (), False, "1.3.0"),
        (["v1.3.0", "1.2.0"], None, "<1.3.0", (), False, "1.2.0"),
        # quarantine holds a version back in either spelling
        (["v1.3.0", "1.2.0"], "1.2.0", None, {"1.3.0"}, False, None),
        (["v1.3.0", "1.3.0", "1.2.0"], "1.2.0", None, {"v1.3.0"}, False, None),
        (["latest"], "1.0.0", None, (), False, None),
        # pre-releases only when allowed
        (TAGS, "1.0.1", "<2.0.0", (), True, "1.1.0-rc.1"),
        (["1.0.0", "1.1.0-rc.1", "1.1.0-rc.2"], "1.1.0-rc.1", None, (), True, "1.1.0-rc.2"),
        (["1.0.0", "1.1.0-rc.1", "1.1.0"], "1.0.0", None, (), True, "1.1.0"),
        # inside the constraint
        (TAGS, None, "<1.0.0", (), False, "0.9.1"),
        (TAGS, "0.9.0", "<1.0.0", (), False, "0.9.1"),
        (TAGS, "0.9.1", "<1.0.0", (), False, None),
        (TAGS, None, ">=1.0.0,<1.0.1", (), False, "1.0.0"),
        # quarantined versions are skipped, the next best one above the deployed is taken
        (TAGS, "1.0.0", None, {"1.0.1", "v2.0.0"}, False, None),
        (TAGS, "0.9.0", None, {"1.0.1", "2.0.0"}, False, "1.0.0"),
        (["1.0.0", "1.0.1", "1.0.2"], "1.0.0", None, {"1.0.1"}, False, "1.0.2"),
        # an adopted container of unknown version is replaced by the newest release
        (TAGS, "unknown", None, (), False, "v2.0.0"),
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
        (TAGS, None, (), False, "v2.0.0"),
        (TAGS, "<1.0.0", (), False, "0.9.1"),
        (TAGS, None, {"v2.0.0", "1.0.1"}, False, "1.0.0"),
        (TAGS, "<2.0.0", (), True, "1.1.0-rc.1"),
        (["1.0.0", "1.1.0-arm64"], None, (), True, "1.0.0"),
        (["latest", "sha-1"], None, (), False, None),
        ([], None, (), False, None),
    ],
)
def test_newest_release(tags, constraint, quarantined, prerelease, expected):
    parsed = parse_constraint(constraint) if constraint else None
    assert newest_release(tags, parsed, quarantined, prerelease) == expected
