from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from shared.errors import StoreError
from shared.runstore import DuplicateDelivery, Run, RunNotFound, RunStore


class Clock:
    """A settable clock, so timestamps in assertions are exact."""

    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nested" / "runs.db"


@pytest.fixture
def store(db_path: Path, clock: Clock) -> Iterator[RunStore]:
    with RunStore(db_path, clock=clock) as opened:
        yield opened


def test_numbers_start_at_one_and_count_up(store: RunStore) -> None:
    numbers = [store.create(kind="ci").number for _ in range(3)]

    assert numbers == [1, 2, 3]


def test_creates_parent_folders_and_uses_wal(db_path: Path, store: RunStore) -> None:
    store.create(kind="ci")

    assert db_path.exists()
    with sqlite3.connect(db_path) as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert mode == "wal"


def test_new_run_fields(store: RunStore, clock: Clock) -> None:
    run = store.create(kind="ci", commit="a" * 40, ref="refs/heads/main", delivery_id="d-1", details={"x": [1]})

    assert run == Run(
        number=1,
        status="queued",
        kind="ci",
        commit="a" * 40,
        ref="refs/heads/main",
        version=None,
        failed_step=None,
        delivery_id="d-1",
        created_at=clock.now,
        started_at=None,
        finished_at=None,
        log_path=None,
        error=None,
        details={"x": [1]},
    )
    assert store.get(1) == run


def test_numbers_are_never_reused_after_delete_and_reopen(db_path: Path) -> None:
    with RunStore(db_path) as store:
        for _ in range(3):
            store.create(kind="ci")
    # Someone prunes the history by hand; AUTOINCREMENT must still not hand out 2 or 3 again.
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("DELETE FROM runs WHERE number >= 2")
    conn.close()

    with RunStore(db_path) as store:
        assert store.create(kind="ci").number == 4
        assert [run.number for run in store.list()] == [4, 1]


def test_concurrent_creates_get_unique_numbers(store: RunStore) -> None:
    numbers: list[int] = []
    numbers_lock = threading.Lock()
    start = threading.Barrier(8)

    def create_some() -> None:
        start.wait()
        for _ in range(25):
            number = store.create(kind="ci").number
            with numbers_lock:
                numbers.append(number)

    threads = [threading.Thread(target=create_some) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(numbers) == list(range(1, 201))


def test_two_stores_on_one_file_share_numbering(db_path: Path) -> None:
    with RunStore(db_path) as first, RunStore(db_path) as second:
        assert first.create(kind="ci").number == 1
        assert second.create(kind="ci").number == 2
        assert first.get(2) is not None


def test_list_is_newest_first_with_limit_and_filters(store: RunStore) -> None:
    for kind in ["ci", "deploy", "ci", "ci"]:
        store.create(kind=kind)
    store.update(3, status="failed")

    assert [run.number for run in store.list()] == [4, 3, 2, 1]
    assert [run.number for run in store.list(limit=2)] == [4, 3]
    assert [run.number for run in store.list(status="queued")] == [4, 2, 1]
    assert [run.number for run in store.list(kind="ci", status="queued")] == [4, 1]
    assert store.list(limit=0) == []


def test_list_rejects_unknown_status(store: RunStore) -> None:
    with pytest.raises(ValueError, match="'done'"):
        store.list(status="done")


def test_get_unknown_is_none(store: RunStore) -> None:
    assert store.get(42) is None


def test_find_by_delivery(store: RunStore) -> None:
    store.create(kind="ci", delivery_id="aaa")
    second = store.create(kind="ci", delivery_id="bbb")
    store.create(kind="ci")

    assert store.find_by_delivery("bbb") == second
    assert store.find_by_delivery("zzz") is None


def test_repeated_delivery_is_refused_and_names_the_existing_run(store: RunStore) -> None:
    first = store.create(kind="ci", delivery_id="same")

    with pytest.raises(DuplicateDelivery) as info:
        store.create(kind="ci", delivery_id="same")

    assert info.value.existing == first
    assert isinstance(info.value, StoreError)
    assert [run.number for run in store.list()] == [1]


def test_update_sets_fields_and_returns_the_run(store: RunStore, clock: Clock) -> None:
    store.create(kind="ci")
    started = clock.now + timedelta(seconds=5)
    finished = clock.now + timedelta(seconds=65)

    run = store.update(
        1,
        status="failed",
        version="1.2.3",
        failed_step="test",
        started_at=started,
        finished_at=finished,
        log_path="/logs/run-0001.log",
        error="tests failed",
        details={"event": {"after": "b" * 40}},
    )

    assert (run.status, run.version, run.failed_step, run.error) == ("failed", "1.2.3", "test", "tests failed")
    assert (run.started_at, run.finished_at, run.duration_seconds) == (started, finished, 60.0)
    assert run.details == {"event": {"after": "b" * 40}}
    assert store.get(1) == run


def test_update_can_clear_a_field(store: RunStore) -> None:
    store.create(kind="ci", commit="c" * 40)

    assert store.update(1, commit=None).commit is None


def test_update_does_not_set_finished_at_by_itself(store: RunStore) -> None:
    store.create(kind="ci")

    assert store.update(1, status="succeeded").finished_at is None


def test_update_converts_other_timezones_to_utc(store: RunStore) -> None:
    store.create(kind="ci")
    plus_two = timezone(timedelta(hours=2))

    run = store.update(1, started_at=datetime(2024, 5, 1, 14, 0, tzinfo=plus_two))

    assert run.started_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert run.started_at is not None and run.started_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"colour": "red"}, "colour"),
        ({"created_at": datetime(2024, 1, 1, tzinfo=UTC)}, "created_at"),
        ({"status": "done"}, "'done'"),
        ({"status": None}, "None"),
        ({"started_at": datetime(2024, 1, 1)}, "timezone-aware"),
        ({"finished_at": "2024-01-01T00:00:00+00:00"}, "timezone-aware"),
        ({"details": ["not", "a", "dict"]}, "details"),
        ({"details": {"when": datetime(2024, 1, 1, tzinfo=UTC)}}, "JSON"),
        ({"version": 123}, "version"),
        ({"kind": None}, "kind"),
    ],
)
def test_update_rejects_bad_fields(store: RunStore, fields: dict[str, object], message: str) -> None:
    store.create(kind="ci")

    with pytest.raises(ValueError, match=message):
        store.update(1, **fields)

    assert store.get(1) == store.list()[0]
    assert store.list()[0].status == "queued"


def test_update_unknown_run(store: RunStore) -> None:
    with pytest.raises(RunNotFound, match="run 9 does not exist"):
        store.update(9, status="running")


def test_mark_unfinished_interrupted_survives_reopen(db_path: Path, clock: Clock) -> None:
    with RunStore(db_path, clock=clock) as store:
        store.create(kind="ci")  # 1 queued
        store.create(kind="ci")  # 2 running
        store.update(2, status="running", started_at=clock.now)
        store.create(kind="ci")  # 3 succeeded
        store.update(3, status="succeeded")
    clock.advance(30)

    with RunStore(db_path, clock=clock) as store:
        interrupted = store.mark_unfinished_interrupted()

    assert [(run.number, run.status, run.finished_at) for run in interrupted] == [(2, "interrupted", clock.now)]
    with RunStore(db_path, clock=clock) as store:
        assert [run.status for run in store.list()] == ["succeeded", "interrupted", "queued"]
        assert store.get(2) == interrupted[0]
        assert store.mark_unfinished_interrupted() == []


def test_mark_unfinished_interrupted_by_kind(store: RunStore) -> None:
    store.create(kind="ci", status="running")
    store.create(kind="deploy", status="running")

    assert [run.number for run in store.mark_unfinished_interrupted(kind="deploy")] == [2]
    assert store.get(1) is not None and store.get(1).status == "running"  # type: ignore[union-attr]


def test_claim_next_queued_takes_the_oldest(store: RunStore, clock: Clock) -> None:
    store.create(kind="ci")
    store.create(kind="deploy")
    store.create(kind="ci")
    clock.advance(10)

    first = store.claim_next_queued("ci")
    second = store.claim_next_queued("ci")

    assert first is not None and (first.number, first.status, first.started_at) == (1, "running", clock.now)
    assert second is not None and second.number == 3
    assert store.claim_next_queued("ci") is None
    claimed_any = store.claim_next_queued()
    assert claimed_any is not None and claimed_any.number == 2
    assert store.claim_next_queued() is None


def test_claim_next_queued_from_many_threads_claims_each_run_once(store: RunStore) -> None:
    for _ in range(40):
        store.create(kind="ci")
    claimed: list[int] = []
    claimed_lock = threading.Lock()

    def worker() -> None:
        while (run := store.claim_next_queued("ci")) is not None:
            with claimed_lock:
                claimed.append(run.number)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(claimed) == list(range(1, 41))


def test_supersede_queued_only_touches_older_queued_runs_of_the_same_ref(store: RunStore, clock: Clock) -> None:
    main, other = "refs/heads/main", "refs/heads/other"
    store.create(kind="ci", ref=main)  # 1: running, must stay
    store.claim_next_queued("ci")
    store.create(kind="ci", ref=main)  # 2: superseded
    store.create(kind="ci", ref=other)  # 3: other branch
    store.create(kind="deploy", ref=main)  # 4: other kind
    store.create(kind="ci", ref=main)  # 5: superseded
    store.create(kind="ci", ref=main)  # 6: the new one
    store.create(kind="ci", ref=main)  # 7: newer than the new one, must stay
    clock.advance(3)

    superseded = store.supersede_queued("ci", main, except_number=6)

    assert [(run.number, run.status, run.finished_at) for run in superseded] == [
        (2, "superseded", clock.now),
        (5, "superseded", clock.now),
    ]
    assert [(run.number, run.status) for run in store.list()] == [
        (7, "queued"),
        (6, "queued"),
        (5, "superseded"),
        (4, "queued"),
        (3, "queued"),
        (2, "superseded"),
        (1, "running"),
    ]
    assert store.get(2).to_json()["superseded_by"] == 6  # type: ignore[union-attr]


def test_supersede_queued_with_a_commit_only_touches_that_commit(store: RunStore) -> None:
    main = "refs/heads/main"
    store.create(kind="ci", ref=main, commit="a" * 40)  # 1: same commit, superseded
    store.create(kind="ci", ref=main, commit="b" * 40)  # 2: another commit, stays queued
    store.create(kind="ci", ref=main, commit="a" * 40)  # 3: the new one

    superseded = store.supersede_queued("ci", main, except_number=3, commit="a" * 40)

    assert [run.number for run in superseded] == [1]
    assert [(run.number, run.status) for run in store.list()] == [(3, "queued"), (2, "queued"), (1, "superseded")]


def test_supersede_run_records_who_and_why_and_leaves_a_started_run_alone(store: RunStore, clock: Clock) -> None:
    store.create(kind="ci", details={"event": {"n": 1}})
    store.create(kind="ci")
    store.claim_next_queued("ci")  # 1 is running now

    assert store.supersede_run(1, by=2, reason="newer") is None
    done = store.supersede_run(2, by=7, reason="run 7 is for a newer commit")

    assert done is not None and (done.status, done.finished_at) == ("superseded", clock.now)
    data = done.to_json()
    assert (data["superseded_by"], data["reason"]) == (7, "run 7 is for a newer commit")
    assert store.get(1).status == "running"  # type: ignore[union-attr]
    assert store.supersede_run(2, by=8, reason="again") is None


def test_to_json_round_trip(store: RunStore, clock: Clock) -> None:
    store.create(kind="ci", commit="d" * 40, ref="refs/heads/main", delivery_id="x", details={"n": 1})
    run = store.update(
        1,
        status="succeeded",
        version="0.2.0",
        started_at=clock.now,
        finished_at=clock.now + timedelta(seconds=1.5),
        log_path="logs/run.log",
    )

    data = json.loads(json.dumps(run.to_json()))

    assert data["created_at"] == "2024-05-01T12:00:00+00:00"
    assert data["finished_at"] == "2024-05-01T12:00:01.500000+00:00"
    assert data["duration_seconds"] == 1.5
    assert set(data) == {
        "number", "status", "kind", "commit", "ref", "version", "failed_step", "delivery_id", "created_at",
        "started_at", "finished_at", "duration_seconds", "log_path", "error", "reason", "superseded_by", "details",
    }  # fmt: skip
    assert Run.from_json(data) == run


def test_to_json_of_a_queued_run_has_nulls(store: RunStore) -> None:
    data = store.create(kind="ci").to_json()

    assert (data["started_at"], data["finished_at"], data["duration_seconds"]) == (None, None, None)


def test_naive_clock_is_refused(db_path: Path) -> None:
    with RunStore(db_path, clock=lambda: datetime(2024, 1, 1)) as store:
        with pytest.raises(ValueError, match="naive"):
            store.create(kind="ci")


def test_create_rejects_unknown_status(store: RunStore) -> None:
    with pytest.raises(ValueError, match="'started'"):
        store.create(kind="ci", status="started")  # type: ignore[arg-type]


def test_garbage_file_is_reported_as_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is not sqlite at all\n" * 200)

    with pytest.raises(StoreError, match="not a SQLite database") as info:
        RunStore(path)

    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def test_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")

    with pytest.raises(StoreError, match="file"):
        RunStore(blocker / "runs.db")


def test_using_a_closed_store_is_a_store_error(db_path: Path) -> None:
    store = RunStore(db_path)
    store.close()

    with pytest.raises(StoreError, match="closed"):
        store.create(kind="ci")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": ""}, "kind"),
        ({"kind": "ci", "commit": 123}, "commit"),
        ({"kind": "ci", "details": {"bad": {1, 2}}}, "JSON"),
    ],
)
def test_create_rejects_bad_values(store: RunStore, fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store.create(**fields)  # type: ignore[arg-type]

    assert store.list() == []


def test_a_batch_commits_its_calls_together_and_undoes_only_a_failing_one(store: RunStore, db_path: Path) -> None:
    with store.batch():
        first = store.create(kind="ci", delivery_id="d-1")
        with pytest.raises(DuplicateDelivery):
            store.create(kind="ci", delivery_id="d-1")
        second = store.create(kind="ci")
        store.update(first.number, status="running")
        with RunStore(db_path) as other:
            assert other.list() == []  # nothing is visible before the batch commits

    with RunStore(db_path) as other:
        assert [(run.number, run.status) for run in other.list()] == [
            (second.number, "queued"),
            (first.number, "running"),
        ]


def test_a_batch_that_raises_records_nothing(store: RunStore) -> None:
    with pytest.raises(RuntimeError), store.batch():
        store.create(kind="ci")
        raise RuntimeError("stop")
    assert store.list() == []


@pytest.mark.parametrize(("sync", "level"), [("full", 2), ("normal", 1)])
def test_sync_says_whether_a_commit_waits_for_the_disk(db_path: Path, sync: str, level: int) -> None:
    # SQLite's own answer (2 FULL, 1 NORMAL): the setting is per connection, so it is read on the store's.
    with RunStore(db_path, sync=sync) as store:  # type: ignore[arg-type]
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == level
        store.create(kind="ci", delivery_id="d-1")
    with RunStore(db_path) as other:
        assert [run.delivery_id for run in other.list()] == ["d-1"]


def test_an_unknown_sync_mode_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sync mode 'off'"):
        RunStore(db_path, sync="off")  # type: ignore[arg-type]
    assert not db_path.exists()
