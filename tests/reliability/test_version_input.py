"""Versions from outside input: commit messages anyone can write, tag lists any registry can hold."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cd_agent.candidate import choose_candidate
from ci_agent.versioning import next_version
from shared.versions import Commit, bump_kind


@pytest.mark.reliability(
    "2 MB commit messages built to make a backtracking revert or footer pattern take hours",
    "the bump is decided (the commit-analyzer's own revert regex is cubic on such input)",
)
def test_hostile_commit_messages_are_decided(observed: Callable[[str], None]) -> None:
    size = 2_000_000
    hostile = [
        Commit("a" * 40, "Revert " + " " * size + "x"),
        Commit("b" * 40, 'Revert "' + "This reverts commit x " * (size // 22)),
        Commit("c" * 40, "fix: a\n\n" + " " * size + "BREAKING CHANGE"),
        Commit("d" * 40, "feat(" + "(" * size + ": x"),
    ]

    kinds = [bump_kind([commit]) for commit in hostile]

    assert kinds == ["patch", "patch", "patch", "patch"]
    observed(f"{len(hostile)} messages of about {size // 1_000_000} MB each decided: {kinds}")


@pytest.mark.reliability(
    "a registry listing 20 000 tags mixing v-prefixed, plain, platform-suffixed and junk tags",
    "CI bumps from the highest release in either spelling; CD deploys the highest release by its own tag, "
    "never a platform build",
)
def test_a_huge_mixed_tag_listing(observed: Callable[[str], None]) -> None:
    tags = [f"{n}.0.0-{arch}" for n in range(5000, 5999) for arch in ("arm64", "amd64", "armv7")]
    tags += [f"v1.{n}.0" for n in range(7000)] + [f"1.{n}.1" for n in range(7000)]
    tags += ["latest", "sha-0123abc", "v", "1.2", "01.0.0", "v1.6999.0+build"] * 500

    released = next_version(tags, ["fix: a"], initial="0.1.0")
    candidate = choose_candidate(tags, "1.0.0", allow_prerelease=True)

    assert released == "1.6999.2"
    assert candidate == "1.6999.1"
    observed(f"{len(tags)} tags: CI releases {released}, CD chooses {candidate}")
