"""RunQueue over a real RunStore in tmp_path: queuing, superseding, claiming, delivery de-duplication."""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
import uuid
from typing import Any

import pytest

from ci_agent.failed_tests import DETAIL
from ci_agent.payload import PushEvent, parse_push
from ci_agent.queue import RunQueue
from shared.runstore import RunStore
from tests.support.payloads import GITHUB_PAYLOADS as PAYLOADS
from tests.support.polling import wait_for


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path / "state" / "runs.db") as store:
        yield store


@pytest.fixture
def queue(store):
    queue = RunQueue(store)
    yield queue
    queue.close()


def push(ref: str = "refs/heads/main", message: str = "fix: something") -> PushEvent:
    data: dict[str, Any] = json.loads((PAYLOADS / "push_with-new-branch.payload.json").read_text())
    data["ref"] = ref
    data["after"] = secrets.token_hex(20)
    data["head_commit"]["message"] = message
    data["commits"][0]["message"] = message
    return parse_push(data)


def delivery() -> str:
    return str(uuid.uuid4())


def test_submit_records_a_queued_run_with_the_event(queue, store):
    event = push(message="feat: new thing")
    delivery_id = delivery()
    run = queue.submit(event, delivery_id)
    stored = store.get(run.number)
    assert stored is not None
    assert stored.status == "queued"
    assert stored.kind == "ci"
    assert stored.commit == event.after
    assert stored.ref == "refs/heads/main"
    assert stored.delivery_id == delivery_id
    assert PushEvent.from_details(stored.details["event"]) == event


def test_take_claims_the_run_and_returns_its_event(queue, store):
    event = push()
    queued = queue.submit(event, delivery())
    taken = queue.take(timeout=1)
    assert taken is not None
    run, taken_event = taken
    assert run.number == queued.number
    assert run.status == "running"
    assert run.started_at is not None
    assert taken_event == event
    assert store.get(queued.number).status == "running"
    assert queue.take(timeout=0.05) is None


def test_a_queue_restarted_on_the_same_store_still_runs_queued_events(store):
    event = push()
    RunQueue(store).submit(event, delivery())
    taken = RunQueue(store).take(timeout=1)
    assert taken is not None
    assert taken[1] == event


def test_take_times_out_when_nothing_is_queued(queue):
    assert queue.take(timeout=0.1) is None


def test_submit_wakes_a_waiting_take(queue):
    results: list[Any] = []
    taker = threading.Thread(target=lambda: results.append(queue.take(timeout=60)))
    taker.start()
    run = queue.submit(push(), delivery())
    # Well before take's own timeout: the submit woke it.
    taker.join(timeout=10)
    assert not taker.is_alive()
    assert results[0] is not None
    assert results[0][0].number == run.number


def test_close_releases_a_waiting_take(queue):
    results: list[Any] = []
    taker = threading.Thread(target=lambda: results.append(queue.take(timeout=20)))
    taker.start()
    queue.close()
    taker.join(timeout=5)
    assert not taker.is_alive()
    assert results == [None]


def test_a_newer_push_of_the_same_commit_supersedes_the_older_queued_runs(queue, store):
    event = push()
    runs = [queue.submit(event, delivery()) for _ in range(5)]
    statuses = [store.get(run.number).status for run in runs]
    assert statuses == ["superseded"] * 4 + ["queued"]
    assert all(store.get(run.number).finished_at is not None for run in runs[:4])
    assert [store.get(run.number).to_json()["superseded_by"] for run in runs[:4]] == [run.number for run in runs[1:]]
    taken = queue.take(timeout=1)
    assert taken is not None
    assert taken[0].number == runs[-1].number
    assert queue.take(timeout=0.05) is None


def test_pushes_of_other_commits_stay_queued_for_the_pipeline_to_compare(queue, store):
    # Arrival order says nothing about which commit is newer (a delivery can be a replay): the
    # pipeline decides by ancestry once it has fetched them (ci_agent/release_guard.py).
    runs = [queue.submit(push(), delivery()) for _ in range(3)]
    assert [store.get(run.number).status for run in runs] == ["queued"] * 3
    assert queue.take(timeout=1)[0].number == runs[0].number


def test_a_running_run_is_never_superseded(queue, store):
    event = push()
    first = queue.submit(event, delivery())
    assert queue.take(timeout=1) is not None
    second = queue.submit(event, delivery())
    third = queue.submit(event, delivery())
    assert store.get(first.number).status == "running"
    assert store.get(second.number).status == "superseded"
    assert store.get(third.number).status == "queued"


def test_other_branches_and_tags_are_not_superseded(queue, store):
    main = queue.submit(push("refs/heads/main"), delivery())
    other = queue.submit(push("refs/heads/develop"), delivery())
    release_1 = queue.submit(push("refs/tags/v1.0.0"), delivery())
    release_2 = queue.submit(push("refs/tags/v1.1.0"), delivery())
    assert [store.get(run.number).status for run in (main, other, release_1, release_2)] == ["queued"] * 4
    order = []
    for _ in range(4):
        taken = queue.take(timeout=1)[0]
        order.append(taken.number)
        # One run of a repository at a time: the next is handed out once this one has ended.
        store.update(taken.number, status="succeeded")
    assert order == [main.number, other.number, release_1.number, release_2.number]


def test_same_delivery_twice_is_one_run(queue, store):
    delivery_id = delivery()
    first = queue.accept(push(), delivery_id)
    second = queue.accept(push(), delivery_id)
    assert first.duplicate is False
    assert second.duplicate is True
    assert second.run.number == first.run.number
    assert len(store.list()) == 1


@pytest.mark.parametrize("status", ["running", "succeeded", "superseded"])
def test_redelivery_of_a_live_or_good_run_is_a_duplicate(queue, store, status):
    delivery_id = delivery()
    run = queue.submit(push(), delivery_id)
    store.update(run.number, status=status)
    again = queue.accept(push(), delivery_id)
    assert again.duplicate is True
    assert again.run.number == run.number
    assert len(store.list()) == 1


@pytest.mark.parametrize("status", ["failed", "interrupted"])
def test_redelivery_of_a_failed_run_queues_a_retry(queue, store, status):
    delivery_id = delivery()
    event = push()
    failed = queue.submit(event, delivery_id)
    store.update(failed.number, status=status)
    retry = queue.accept(event, delivery_id)
    assert retry.duplicate is False
    assert retry.run.number != failed.number
    assert retry.run.status == "queued"
    assert retry.run.delivery_id == delivery_id
    assert retry.run.details["retry_of"] == failed.number
    old = store.get(failed.number)
    assert old.status == status
    assert old.details["delivery_id"] == delivery_id
    assert old.details["retried_by"] == retry.run.number
    # Pressing "Redeliver" again while the retry waits is a duplicate of the retry.
    again = queue.accept(event, delivery_id)
    assert again.duplicate is True
    assert again.run.number == retry.run.number
    assert len(store.list()) == 2


def failed_tests(store: RunStore, number: int, key: str, *, commit: str | None = None) -> None:
    """What the pipeline records when the test command of run ``number`` fails under the settings ``key``."""
    run = store.get(number)
    assert run is not None
    fields: dict[str, Any] = {"status": "failed", "failed_step": "test", "details": {**run.details,
                                                                                    DETAIL: key}}
    store.update(number, **fields, **({"commit": commit} if commit else {}))


def test_a_commit_whose_tests_failed_is_not_queued_again(store):
    queue = RunQueue(store, tests_key="settings-1")
    delivery_id = delivery()
    event = push()
    failed = queue.submit(event, delivery_id)
    failed_tests(store, failed.number, "settings-1")
    redelivered = queue.accept(event, delivery_id)
    replayed = queue.accept(event, delivery())
    polled = queue.accept(event, source="poll")
    for answer in (redelivered, replayed, polled):
        assert answer.duplicate is True and answer.run.number == failed.number
        assert answer.reason is not None and f"failed in run {failed.number}" in answer.reason
        assert f"ci-agent run --ref {event.after}" in answer.reason
    assert len(store.list()) == 1
    # Another ref, another commit, or other test settings: tested.
    assert queue.accept(dataclasses.replace(event, ref="refs/heads/other", branch="other")).duplicate is False
    assert queue.accept(push()).duplicate is False
    assert RunQueue(store, tests_key="settings-2").accept(event, delivery()).duplicate is False


def test_other_failures_are_still_retried(store):
    queue = RunQueue(store, tests_key="settings-1")
    delivery_id = delivery()
    event = push()
    failed = queue.submit(event, delivery_id)
    store.update(failed.number, status="failed", failed_step="test")  # a time-out: no key recorded
    assert queue.accept(event, delivery_id).duplicate is False


def test_an_annotated_tag_whose_tests_failed_is_not_queued_again(store):
    queue = RunQueue(store, tests_key="settings-1")
    event = push("refs/tags/v1.2.3")
    failed = queue.submit(event, delivery())
    # The pipeline peeled the tag object in `after` to the commit it tags, and records that commit.
    failed_tests(store, failed.number, "settings-1", commit=secrets.token_hex(20))
    again = queue.accept(event, delivery())
    assert again.duplicate is True and again.run.number == failed.number
    assert again.reason is not None and "ci-agent run --ref v1.2.3" in again.reason


def test_run_without_delivery_id_is_never_a_duplicate(queue, store):
    queue.submit(push("refs/heads/a"))
    queue.submit(push("refs/heads/b"))
    assert len(store.list()) == 2


def test_unusable_stored_event_fails_that_run_and_take_moves_on(queue, store):
    broken = queue.submit(push("refs/heads/a"), delivery())
    details = dict(broken.details)
    details["event"] = {**details["event"], "ref": "refs/heads/--upload-pack=touch x"}
    store.update(broken.number, details=details)
    good = queue.submit(push("refs/heads/b"), delivery())
    taken = queue.take(timeout=1)
    assert taken is not None
    assert taken[0].number == good.number
    failed = store.get(broken.number)
    assert failed.status == "failed"
    assert "upload-pack" in (failed.error or "")
    assert failed.finished_at is not None


def test_concurrent_deliveries_each_get_a_run_and_only_the_newest_stays_queued(queue, store):
    answers: list[Any] = []
    errors: list[BaseException] = []
    event = push()

    def deliver() -> None:
        try:
            answers.append(queue.accept(event, delivery()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    numbers = sorted(answer.run.number for answer in answers)
    assert numbers == list(range(1, 41))
    statuses = {run.number: run.status for run in store.list(limit=100)}
    assert [number for number, status in statuses.items() if status == "queued"] == [40]
    assert sum(status == "superseded" for status in statuses.values()) == 39


def test_a_branch_push_of_a_released_commit_is_a_duplicate_of_the_release(queue, store):
    event = push()
    released = queue.submit(event, delivery())
    store.update(released.number, status="succeeded", version="0.1.0")
    failed = queue.submit(push(), delivery())
    store.update(failed.number, status="failed")

    replay = queue.accept(event, delivery())
    # An explicit release tag on the same commit is a request of its own.
    tag = queue.accept(dataclasses.replace(event, ref="refs/tags/v1.0.0", branch=None, tag="v1.0.0"), delivery())

    assert (replay.duplicate, replay.run.number) == (True, released.number)
    assert tag.duplicate is False
    assert len(store.list()) == 3


def test_accept_nowait_records_the_run_and_wakes_a_waiting_take(queue, store):
    results: list[Any] = []
    taker = threading.Thread(target=lambda: results.append(queue.take(timeout=60)))
    taker.start()
    # None while the taker holds the queue for its first look; then recorded on this thread.
    submission = wait_for(lambda: queue.accept_nowait(push(), delivery()), timeout=10, what="the queue free")
    taker.join(timeout=10)
    assert not taker.is_alive()
    assert results[0] is not None
    assert results[0][0].number == submission.run.number
    assert store.get(submission.run.number).status == "running"


def test_accept_nowait_gives_way_while_another_thread_holds_the_store(queue, store):
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.batch():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    try:
        assert queue.accept_nowait(push(), delivery()) is None
    finally:
        release.set()
        holder.join(10)
    assert store.list() == []

    submission = queue.accept_nowait(push(), delivery())
    assert submission is not None and not submission.duplicate
    assert [run.number for run in store.list(status="queued")] == [submission.run.number]


def test_accept_nowait_finds_a_repeated_delivery_like_accept(queue, store):
    delivery_id = delivery()
    first = queue.accept(push(), delivery_id)
    again = queue.accept_nowait(push(), delivery_id)
    assert again is not None and again.duplicate and again.run.number == first.run.number
    assert len(store.list()) == 1
