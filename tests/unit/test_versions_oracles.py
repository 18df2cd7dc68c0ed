"""Our version logic against independent implementations (tests/fixtures/versions, see its README).

semantic-release's commit analyzer (conventionalcommits preset) decides the bump, node-semver decides
what a version is, their order, the next version and what a range admits. Where we differ on purpose
the difference is listed here with its reason, and the test checks it is still a difference.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import semver
from hypothesis import given
from hypothesis import strategies as st

from shared.versions import BumpKind, Commit, bump, bump_kind, parse_constraint, parse_version

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "versions"
ANALYZER: dict[str, Any] = json.loads((FIXTURES / "commit-analyzer.json").read_text())
NODE_SEMVER: dict[str, Any] = json.loads((FIXTURES / "node-semver.json").read_text())

# Every CI run releases, so semantic-release's "no release" (docs:, chore:, no convention) is a patch here.
NO_RELEASE: BumpKind = "patch"

# Conventional Commits 1.0.0, item 15: types are case-insensitive; BREAKING CHANGE must be upper case.
# The analyzer matches types case-sensitively (plus FEAT/FIX for JSHint) and the footer token in any case.
# A squash merge's "* type: ..." bullets count as the commits they list; the analyzer reads only the title.
BUMP_DIFFERENCES: dict[str, BumpKind] = {
    "type capitalised Feat": "minor",
    "footer lower case": "patch",
    "footer capitalised": "patch",
    "squash merge with a feat bullet": "minor",
    "squash merge with a bang bullet": "major",
    "GitHub squash of several commits with bodies": "major",
}

# Docker tags cannot hold "+" or spaces; "1.1.0-arm64" is one platform's build, not a release.
VALID_DIFFERENCES = {" 1.2.3", "1.2.3 ", "1.2.3+build", "1.2.3-rc.1+b.5", "1.1.0-arm64"}

# (constraint, version): <X.Y.Z never admits X.Y.Z's pre-releases (PEP 440's reading of "not 2.x"),
# and a partial version after ^ or ~ starts at X.0.0, not at X.0.0-0 as node-semver's desugaring does.
SATISFIES_DIFFERENCES = {
    (">=1.0.0, <2.0.0", "2.0.0-rc.1"),
    ("<2.0.0", "2.0.0-rc.1"),
    ("<1.0.0", "1.0.0-rc.1"),
    ("^1", "1.0.0-rc.1"),
    ("~1", "1.0.0-rc.1"),
}


def _release(case: dict[str, Any]) -> BumpKind:
    expected: BumpKind = case["release"] or NO_RELEASE
    return BUMP_DIFFERENCES.get(case["name"], expected)


@pytest.mark.parametrize("case", ANALYZER["cases"], ids=[case["name"] for case in ANALYZER["cases"]])
def test_bump_kind_agrees_with_semantic_release(case: dict[str, Any]) -> None:
    commits = [Commit(commit["sha"], commit["message"]) for commit in case["commits"]]

    assert bump_kind(commits) == _release(case)


def test_the_listed_bump_differences_are_real_and_few() -> None:
    names = {case["name"]: case for case in ANALYZER["cases"]}

    assert set(BUMP_DIFFERENCES) <= set(names)
    for name, ours in BUMP_DIFFERENCES.items():
        assert (names[name]["release"] or NO_RELEASE) != ours, name


@pytest.mark.parametrize("row", NODE_SEMVER["valid"], ids=[repr(row["tag"]) for row in NODE_SEMVER["valid"]])
def test_which_tags_are_versions_agrees_with_node_semver(row: dict[str, Any]) -> None:
    parsed = parse_version(row["tag"])
    ours = None if parsed is None else str(parsed)

    if row["tag"] in VALID_DIFFERENCES:
        assert ours is None and row["version"] is not None
    else:
        assert ours == row["version"]


def test_order_agrees_with_node_semver() -> None:
    expected = NODE_SEMVER["sorted"]
    shuffled = list(reversed(expected))

    assert [str(v) for v in sorted(semver.Version.parse(v) for v in shuffled)] == expected
    parsed = [parse_version(v) for v in expected]
    assert all(p is not None for p in parsed)
    assert all(a < b for a, b in zip(parsed, parsed[1:], strict=False))  # type: ignore[operator]


@pytest.mark.parametrize("row", NODE_SEMVER["inc"], ids=[f"{r['version']}-{r['kind']}" for r in NODE_SEMVER["inc"]])
def test_bump_agrees_with_node_semver_inc(row: dict[str, Any]) -> None:
    assert str(bump(semver.Version.parse(row["version"]), row["kind"])) == row["next"]


@pytest.mark.parametrize(
    "row", NODE_SEMVER["satisfies"], ids=[row["constraint"] for row in NODE_SEMVER["satisfies"]]
)
def test_constraints_agree_with_node_semver_satisfies(row: dict[str, Any]) -> None:
    constraint = parse_constraint(row["constraint"])
    ours = {v for v in NODE_SEMVER["versions"] if constraint.allows(v)}
    node = set(row["allows"])

    differences = {(row["constraint"], v) for v in ours ^ node}
    assert differences == {d for d in SATISFIES_DIFFERENCES if d[0] == row["constraint"]}
    # Every difference is node-semver admitting a pre-release that we refuse, never the reverse.
    assert ours <= node


# conventional-changelog-conventionalcommits 10.4.1's revertPattern, verbatim (JavaScript's \w is ASCII).
PRESET_REVERT = re.compile(
    r'^(?:Revert|revert:)\s"?([\s\S]+?)"?\s*This reverts commit ([A-Za-z0-9_]*)\.', re.IGNORECASE
)
_PIECES = ["Revert", "revert:", "REVERT", " ", "  ", "\n", '"', "This reverts commit ", "this REVERTS commit ",
           "abc123", ".", "feat: x", "x"]


@given(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join))
def test_revert_scan_reads_what_the_preset_pattern_reads(message: str) -> None:
    match = PRESET_REVERT.match(message)
    expected = None if match is None else (match[1].strip(), match[2])

    assert Commit("", message).reverts() == expected
