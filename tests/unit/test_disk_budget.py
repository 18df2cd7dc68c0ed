"""CI_DISK_BUDGET's policy (ci_agent/disk_budget.py) over an in-memory engine; the real engine is
tests/reliability/test_disk_budget.py."""

from __future__ import annotations

from typing import Any

import pytest
from loguru import logger

from ci_agent.disk_budget import (
    OWNER_LABEL,
    DiskBudget,
    EngineContainer,
    EngineDiskState,
    EngineImage,
    is_ci_tag,
    owned,
    plan,
    weight,
)
from ci_agent.settings import CiSettings
from ci_agent.targets import load_targets
from shared.errors import SettingsError
from shared.settings import load_settings

APP = "127.0.0.1:5000/me/app"
WEB = "127.0.0.1:5000/me/web"
MB = 10**6
BASE = "sha256:base"


def image(name: str, tags: list[str], last_used: float, layers: list[tuple[str, int]], owner: str = APP) -> EngineImage:
    return EngineImage(
        id=f"sha256:{name}", tags=tuple(f"{owner}:{tag}" if ":" not in tag else tag for tag in tags),
        labels={OWNER_LABEL: owner}, last_used=last_used, layers=(*layers, (BASE, 50 * MB)),
    )


def state(*images: EngineImage, containers: tuple[EngineContainer, ...] = ()) -> EngineDiskState:
    return EngineDiskState(images, containers, frozenset({BASE}))


def test_the_tags_ci_makes_are_its_test_staging_and_latest_tags_of_that_repository_only() -> None:
    for tag in ("ci-test", "ci-test-linux-arm64", "ci-staging-linux-arm-v7", "latest"):
        assert is_ci_tag(f"{APP}:{tag}", APP)
    assert not is_ci_tag(f"{APP}:1.2.0", APP)  # a version: CI removes its own at the end of each run
    assert not is_ci_tag(f"{WEB}:ci-test", APP)
    assert not is_ci_tag(f"{APP}:my-test", APP)
    # the engine writes Docker Hub's names short
    assert is_ci_tag("me/app:latest", "docker.io/me/app")
    assert is_ci_tag("app:ci-test", "docker.io/library/app")


def test_an_image_with_a_tag_ci_did_not_make_or_of_another_agent_is_not_owned() -> None:
    mine = image("a", ["ci-test"], 1, [("sha256:a", MB)])
    pulled_by_cd = image("b", ["latest", "1.0.0"], 2, [("sha256:b", MB)])
    other_agents = image("c", ["ci-test"], 3, [("sha256:c", MB)], owner=f"{APP}-other")
    untagged = image("d", [], 4, [("sha256:d", MB)])
    assert owned(state(mine, pulled_by_cd, other_agents, untagged), [APP]) == [mine, untagged]


def test_shared_layers_count_once_and_base_layers_not_at_all() -> None:
    test_image = image("t", ["ci-test"], 1, [("sha256:t", 5 * MB), ("sha256:common", 100 * MB)])
    release = image("r", ["latest"], 2, [("sha256:r", 1 * MB), ("sha256:common", 100 * MB)])
    assert weight([test_image, release], {BASE}) == 106 * MB


def test_under_the_budget_nothing_is_pruned() -> None:
    chosen = plan(state(image("t", ["ci-test"], 1, [("sha256:t", 5 * MB)])), [APP], budget=10 * MB)
    assert chosen.removals == () and chosen.before == chosen.after == 5 * MB


def test_over_the_budget_the_oldest_go_first_until_it_fits_and_the_last_release_stays() -> None:
    old_test = image("t1", ["ci-test"], 10, [("sha256:t1", 40 * MB)], owner=WEB)
    leftover = image("old", [], 5, [("sha256:old", 30 * MB)])
    release = image("r", ["latest"], 1, [("sha256:r", 60 * MB)])  # the oldest of all, but the last release
    new_test = image("t2", ["ci-test"], 20, [("sha256:t2", 20 * MB)])

    chosen = plan(state(old_test, leftover, release, new_test), [APP, WEB], budget=85 * MB)

    assert [removal.references for removal in chosen.removals] == [
        ("sha256:old",), (f"{WEB}:ci-test",),  # oldest first; an untagged image is removed by id
    ]
    assert chosen.before == 150 * MB and chosen.after == 80 * MB
    assert [removal.freed for removal in chosen.removals] == [30 * MB, 40 * MB]
    assert f"{APP}:latest" in chosen.kept


def test_a_budget_of_zero_keeps_only_the_last_releases() -> None:
    release = image("r", ["latest"], 1, [("sha256:r", 60 * MB)])
    staging = image("s", ["ci-staging-linux-arm64"], 2, [("sha256:s", 60 * MB)], owner=WEB)
    test_image = image("t", ["ci-test"], 3, [("sha256:t", 1 * MB)])
    chosen = plan(state(release, staging, test_image), [APP, WEB], budget=0)
    assert [removal.references for removal in chosen.removals] == [(f"{APP}:ci-test",)]
    assert chosen.after == 120 * MB


def test_removing_an_image_frees_only_the_layers_no_remaining_image_shares() -> None:
    test_image = image("t", ["ci-test"], 1, [("sha256:t", 1 * MB), ("sha256:common", 100 * MB)])
    release = image("r", ["latest"], 2, [("sha256:r", 1 * MB), ("sha256:common", 100 * MB)])
    chosen = plan(state(test_image, release), [APP], budget=0)
    assert [(removal.references, removal.freed) for removal in chosen.removals] == [((f"{APP}:ci-test",), MB)]


def test_a_repository_with_a_run_in_progress_is_not_pruned() -> None:
    busy_test = image("t", ["ci-test"], 1, [("sha256:t", 50 * MB)], owner=WEB)
    chosen = plan(state(busy_test), [APP, WEB], budget=0, busy=[WEB])
    assert chosen.removals == ()


def test_stopped_test_containers_go_whatever_the_budget_running_ones_and_strangers_stay() -> None:
    containers = (
        EngineContainer("c1", "pi-cicd-ci-test-x-run-1", APP, running=False, size=3 * MB),
        EngineContainer("c2", "pi-cicd-ci-test-y-run-2", APP, running=True),
        EngineContainer("c3", "pi-cicd-ci-test-z-run-3", "elsewhere/app", running=False),
    )
    chosen = plan(state(containers=containers), [APP], budget=10**12)
    assert [(removal.kind, removal.references) for removal in chosen.removals] == [("container", ("c1",))]
    assert chosen.before == 3 * MB and chosen.after == 0


class FakeEngine:
    """An engine as EngineDisk sees it: a reading, and what was removed (``refuse``: in use)."""

    def __init__(self, reading: EngineDiskState, refuse: frozenset[str] = frozenset()) -> None:
        self.reading = reading
        self.refuse = refuse
        self.removed: list[str] = []
        self.fail: Exception | None = None

    def disk_state(self) -> EngineDiskState:
        if self.fail is not None:
            raise self.fail
        return self.reading

    def remove_image(self, reference: str) -> bool:
        if reference in self.refuse:
            return False
        self.removed.append(reference)
        return True

    def remove_container(self, container_id: str) -> bool:
        self.removed.append(container_id)
        return True


@pytest.fixture
def lines() -> Any:
    seen: list[str] = []
    handler = logger.add(lambda message: seen.append(str(message).strip()), format="{level} {message}")
    yield seen
    logger.remove(handler)


def test_enforce_prunes_and_logs_what_and_the_finished_repository_is_not_busy(lines: list[str]) -> None:
    engine = FakeEngine(state(
        image("t", ["ci-test"], 1, [("sha256:t", 50 * MB)]),
        image("u", ["ci-test-linux-arm64"], 2, [("sha256:u", 50 * MB)]),
        image("w", ["ci-test"], 3, [("sha256:w", 50 * MB)], owner=WEB),
    ), refuse=frozenset({f"{APP}:ci-test-linux-arm64"}))
    budget = DiskBudget(60 * MB, lambda: [APP, WEB])
    with budget.running(APP):
        chosen = budget.enforce(engine, logger, finished=APP)
    assert chosen is not None and engine.removed == [f"{APP}:ci-test"]
    assert any("disk budget: pruned 127.0.0.1:5000/me/app:ci-test (50.0 MB)" in line for line in lines)
    assert any(line.startswith("WARNING") and "could not prune" in line and "ci-test-linux-arm64" in line
               for line in lines)
    assert any("CI held 150.0 MB on the engine (CI_DISK_BUDGET=60.0 MB)" in line for line in lines)


def test_nothing_is_pruned_while_another_repository_has_a_run_in_progress(lines: list[str]) -> None:
    engine = FakeEngine(state(image("t", ["ci-test"], 1, [("sha256:t", 50 * MB)])))
    budget = DiskBudget(0, lambda: [APP, WEB])
    with budget.running(WEB), budget.running(APP):
        assert budget.enforce(engine, logger, finished=APP) is None
    assert engine.removed == []
    assert any("not checked now, a run of 127.0.0.1:5000/me/web is in progress" in line for line in lines)
    budget.enforce(engine, logger)  # the last run to end
    assert engine.removed == [f"{APP}:ci-test"]


def test_an_engine_that_cannot_be_read_prunes_nothing_and_says_why(lines: list[str]) -> None:
    from ci_agent.errors import StepFailed

    engine = FakeEngine(state())
    engine.fail = StepFailed("build", "reading the engine's images failed: lost the connection")
    assert DiskBudget(0, lambda: [APP]).enforce(engine, logger) is None
    assert any("cannot read what CI holds on the engine, nothing pruned: reading the engine's images failed" in line
               for line in lines)


BASE_ENV = {"CI_REPO_URL": "https://example.com/me/app.git", "CI_IMAGE": APP, "CI_ALLOW_UNSIGNED": "true"}


def test_ci_disk_budget_defaults_to_4gb_takes_sizes_and_names_itself_when_wrong() -> None:
    assert load_settings(CiSettings, BASE_ENV).ci_disk_budget == 4 * 10**9
    assert load_settings(CiSettings, {**BASE_ENV, "CI_DISK_BUDGET": "500MB"}).ci_disk_budget == 500 * MB
    assert load_settings(CiSettings, {**BASE_ENV, "CI_DISK_BUDGET": "0"}).ci_disk_budget == 0
    with pytest.raises(SettingsError, match=r"CI_DISK_BUDGET='lots': 'lots' is not a size such as 2GB"):
        load_settings(CiSettings, {**BASE_ENV, "CI_DISK_BUDGET": "lots"})
    with pytest.raises(SettingsError, match=r"CI_DISK_BUDGET"):
        load_settings(CiSettings, {**BASE_ENV, "CI_DISK_BUDGET": "-1GB"})


def test_with_a_repos_file_the_budget_stays_agent_wide_and_is_no_table_key(tmp_path: Any) -> None:
    repos = tmp_path / "repos.toml"
    repos.write_text(
        '[repos.app]\nrepo_url = "https://example.com/me/app.git"\nimage = "127.0.0.1:5000/me/app"\n'
        'disk_budget = "1GB"\n'
    )
    repos.chmod(0o600)
    environ = {"CI_REPOS_FILE": str(repos), "CI_ALLOW_UNSIGNED": "true", "CI_DISK_BUDGET": "1GB"}
    settings = load_settings(CiSettings, environ)
    assert settings.ci_disk_budget == 10**9
    with pytest.raises(SettingsError, match=r"disk_budget"):
        load_targets(settings, environ)



def test_layers_of_an_image_someone_else_tagged_free_nothing() -> None:
    test_image = image("t", ["ci-test"], 1, [("sha256:t", 1 * MB), ("sha256:common", 100 * MB)])
    theirs = image("r", ["latest", "by-hand"], 2, [("sha256:r", 1 * MB), ("sha256:common", 100 * MB)])
    chosen = plan(state(test_image, theirs), [APP], budget=0)
    assert chosen.before == MB and [removal.freed for removal in chosen.removals] == [MB]
