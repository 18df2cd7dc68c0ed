"""The listener's kept-open readers: nothing created by looking, a replaced file read anew, retain closes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cd_agent.errors import StateError
from cd_agent.state import DeployState, Release
from cd_agent.state_readers import StateReaders
from shared.runstore import RunStore


def test_a_missing_file_is_not_created_by_looking(tmp_path: Path) -> None:
    readers = StateReaders()
    with readers.deploy_state(tmp_path / "cd.sqlite3") as state, readers.runs(tmp_path / "runs.sqlite3") as runs:
        assert state is None and runs is None
    assert list(tmp_path.iterdir()) == []


def test_the_same_reader_serves_every_look_and_sees_other_writers(tmp_path: Path) -> None:
    path = tmp_path / "cd.sqlite3"
    with DeployState(path) as written:
        written.set_current(Release("1.0.0"))
    readers = StateReaders()
    with readers.deploy_state(path) as first:
        assert first is not None and first.current == Release("1.0.0")
    with DeployState(path) as written:
        written.set_current(Release("1.0.1"))
    with readers.deploy_state(path) as second:
        assert second is first
        assert second is not None and second.current == Release("1.0.1")
    readers.close()


def test_a_replaced_file_is_opened_anew(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    with RunStore(path) as store:
        store.create(kind="deploy")
    readers = StateReaders()
    with readers.runs(path) as first:
        assert first is not None and len(first.list()) == 1
    for name in ("runs.sqlite3", "runs.sqlite3-wal", "runs.sqlite3-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with RunStore(path) as store:
        store.create(kind="deploy")
        store.create(kind="deploy")
    with readers.runs(path) as second:
        assert second is not first
        assert second is not None and len(second.list()) == 2
    readers.close()


def test_retain_closes_the_readers_of_apps_gone(tmp_path: Path) -> None:
    kept, gone = tmp_path / "kept.sqlite3", tmp_path / "gone.sqlite3"
    for path in (kept, gone):
        DeployState(path).close()
    readers = StateReaders()
    with readers.deploy_state(kept) as kept_state, readers.deploy_state(gone) as gone_state:
        assert kept_state is not None and gone_state is not None
    readers.retain([kept])
    with pytest.raises(StateError):
        gone_state.current  # noqa: B018 - reading a property is the point
    with readers.deploy_state(kept) as again:
        assert again is kept_state
    readers.close()
