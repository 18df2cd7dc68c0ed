"""DeployState: releases, quarantine, polls and the deploy journal survive a reopen."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cd_agent.errors import StateError
from cd_agent.state import DeployState, Journal, Release

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_an_empty_state_knows_nothing(tmp_path: Path) -> None:
    with DeployState(tmp_path / "sub" / "cd.sqlite3") as state:
        assert state.current is None and state.previous is None
        assert state.quarantined == {} and state.journal is None
        assert state.last_poll_at is None and state.next_poll_at is None and state.last_error is None


def test_releases_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "cd.sqlite3"
    with DeployState(path) as state:
        state.record_deployed(Release("1.1.0", "sha256:b", "c2", T0), Release("1.0.0", "sha256:a"))

    with DeployState(path) as state:
        assert state.current == Release("1.1.0", "sha256:b", "c2", T0)
        assert state.previous == Release("1.0.0", "sha256:a")
        state.set_previous(None)
        assert state.previous is None


def test_quarantine_keeps_reason_and_time_and_can_be_lifted(tmp_path: Path) -> None:
    with DeployState(tmp_path / "cd.sqlite3") as state:
        state.quarantine("1.0.1", "health: exited with code 3", since=T0)

        assert state.is_quarantined("1.0.1") and not state.is_quarantined("1.0.2")
        entry = state.quarantined["1.0.1"]
        assert entry.reason == "health: exited with code 3" and entry.since == T0
        assert state.release_quarantine("1.0.1") is True
        assert state.release_quarantine("1.0.1") is False
        assert state.quarantined_versions == set()


def test_poll_times_and_last_error(tmp_path: Path) -> None:
    with DeployState(tmp_path / "cd.sqlite3") as state:
        state.set_last_poll_at(T0)
        state.set_next_poll_at(T0.replace(minute=1))
        state.set_last_error("registry unavailable")

        assert state.last_poll_at == T0 and state.next_poll_at == T0.replace(minute=1)
        assert state.last_error == "registry unavailable"
        state.set_last_error(None)
        assert state.last_error is None


def test_the_journal_records_phases_and_is_cleared_by_a_finished_deploy(tmp_path: Path) -> None:
    path = tmp_path / "cd.sqlite3"
    with DeployState(path) as state:
        state.begin_journal(Journal("1.1.0", "app", "pulled", T0, run=7, old_container_id="old", old_version="1.0.0"))
        state.update_journal(phase="created", new_container_id="new")
        with pytest.raises(StateError, match="already in progress"):
            state.begin_journal(Journal("1.2.0", "app", "pulled", T0))

    with DeployState(path) as state:
        journal = state.journal
        assert journal is not None
        assert (journal.phase, journal.new_container_id) == ("created", "new")
        assert (journal.old_version, journal.run) == ("1.0.0", 7)
        assert not journal.proven_healthy
        assert state.update_journal(phase="verdict", healthy=True).proven_healthy
        state.record_deployed(Release("1.1.0"), Release("1.0.0"))
        assert state.journal is None


def test_updating_a_missing_journal_or_an_unknown_phase_is_an_error(tmp_path: Path) -> None:
    with DeployState(tmp_path / "cd.sqlite3") as state:
        with pytest.raises(StateError, match="no deploy in progress"):
            state.update_journal(phase="created")
        with pytest.raises(StateError, match="unknown deploy phase"):
            state.begin_journal(Journal("1.0.0", "app", "exploded", T0))  # type: ignore[arg-type]
        assert state.journal is None


def test_status_json(tmp_path: Path) -> None:
    with DeployState(tmp_path / "cd.sqlite3") as state:
        state.record_deployed(Release("1.1.0", "sha256:b", "c2", T0), None)
        state.quarantine("1.2.0", "health", since=T0)

        data = state.to_json()

    assert data["current"]["version"] == "1.1.0" and data["current"]["deployed_at"] == "2026-05-01T12:00:00+00:00"
    assert data["previous"] is None
    assert data["quarantined"] == [{"version": "1.2.0", "reason": "health", "since": "2026-05-01T12:00:00+00:00"}]
    assert data["deploy_in_progress"] is None


def test_an_unusable_path_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="cannot open the deploy state"):
        DeployState(tmp_path / "file" / "cd.sqlite3")


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _persisted(path: Path) -> tuple[object, object, object]:
    """What `cd-agent status`, a process of its own, reads: the file itself."""
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT last_poll_at, next_poll_at, last_error FROM polls WHERE id = 1").fetchone()
    finally:
        db.close()
    if row is None:
        return None, None, None
    return (None if row[0] is None else datetime.fromisoformat(row[0]),
            None if row[1] is None else datetime.fromisoformat(row[1]), row[2])


def _poll(state: DeployState, minute: int, error: str | None = None) -> None:
    """What the watcher records of one poll, in its order."""
    if error is None:
        state.set_last_poll_at(T0.replace(minute=minute))
    state.set_last_error(error)
    state.set_next_poll_at(T0.replace(minute=minute + 1))


def test_poll_bookkeeping_is_written_at_most_once_per_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "cd.sqlite3"
    clock = FakeMonotonic()
    state = DeployState(path, poll_flush_interval=900, monotonic=clock)
    try:
        _poll(state, 0)  # the first poll is written at once, whole: status shows it and the next poll
        assert _persisted(path) == (T0, T0.replace(minute=1), None)
        for minute in range(1, 15):
            clock.now += 60
            _poll(state, minute)
        # this process sees every poll; the file still holds the first
        assert state.last_poll_at == T0.replace(minute=14)
        assert _persisted(path) == (T0, T0.replace(minute=1), None)
        clock.now += 60  # 15 min since the last write
        state.set_last_poll_at(T0.replace(minute=15))
        assert _persisted(path)[0] == T0.replace(minute=15)
        state.set_last_error("registry unreachable")  # in memory until the next flush or the close
        assert _persisted(path)[2] is None
    finally:
        state.close()
    assert _persisted(path)[::2] == (T0.replace(minute=15), "registry unreachable")


def test_a_first_poll_that_failed_is_written_whole_too(tmp_path: Path) -> None:
    # The registry unreachable from the start: status still shows the error and when the next poll comes.
    path = tmp_path / "cd.sqlite3"
    clock = FakeMonotonic()
    with DeployState(path, poll_flush_interval=900, monotonic=clock) as state:
        _poll(state, 0, error="registry unreachable")
        assert _persisted(path) == (None, T0.replace(minute=1), "registry unreachable")
        clock.now += 60
        _poll(state, 1, error="registry unreachable")
        assert _persisted(path) == (None, T0.replace(minute=1), "registry unreachable")


def test_state_that_matters_is_written_at_once_whatever_the_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "cd.sqlite3"
    with DeployState(path, poll_flush_interval=900, monotonic=FakeMonotonic()) as state:
        _poll(state, 0)
        state.set_last_poll_at(T0.replace(minute=1))
        state.record_deployed(Release("1.1.0", "sha256:b"), None)
        state.quarantine("1.2.0", "unhealthy", since=T0)
        with DeployState(path) as other:
            assert other.current == Release("1.1.0", "sha256:b")
            assert other.is_quarantined("1.2.0")
        assert _persisted(path)[0] == T0


def test_a_zero_flush_interval_writes_every_poll(tmp_path: Path) -> None:
    path = tmp_path / "cd.sqlite3"
    with DeployState(path, poll_flush_interval=0) as state:
        state.set_last_poll_at(T0)
        state.set_last_poll_at(T0.replace(minute=1))
        assert _persisted(path) == (T0.replace(minute=1), None, None)


def test_the_watchers_process_sees_its_unwritten_polls_from_another_instance(tmp_path: Path) -> None:
    """The status page runs in the watcher's process and opens the state itself: it shows the last poll."""
    path = tmp_path / "cd.sqlite3"
    clock = FakeMonotonic()
    with DeployState(path, poll_flush_interval=900, monotonic=clock) as watcher:
        watcher.set_last_poll_at(T0)
        watcher.set_last_poll_at(T0.replace(minute=1))  # in memory only
        with DeployState(path) as page:
            assert page.last_poll_at == T0.replace(minute=1)
    with DeployState(path) as after:  # written at the close; nothing left in memory
        assert after.last_poll_at == T0.replace(minute=1)
