"""The idle worker sleeps in the queue until a delivery or a stop wakes it: no polling timer."""

from __future__ import annotations

import threading
from pathlib import Path

from ci_agent.payload import PushEvent
from ci_agent.queue import RunQueue
from ci_agent.worker import Worker
from shared.runstore import Run, RunStore
from tests.support.polling import wait_for

ZERO = "0" * 40


class RecordingQueue(RunQueue):
    """The real queue, remembering the timeout of every ``take``."""

    def __init__(self, store: RunStore) -> None:
        super().__init__(store)
        self.timeouts: list[float | None] = []
        self.waiting = threading.Event()

    def take(self, timeout: float | None = None) -> tuple[Run, PushEvent] | None:
        self.timeouts.append(timeout)
        self.waiting.set()
        return super().take(timeout)


class Executor:
    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.executed: list[int] = []

    def execute(self, run: Run, event: PushEvent) -> Run:
        self.executed.append(run.number)
        return self.store.update(run.number, status="succeeded")

    def fail(self, run: Run, message: str) -> Run:
        return self.store.update(run.number, status="failed", error=message)


def _event(sha: str) -> PushEvent:
    return PushEvent(ref="refs/heads/main", branch="main", tag=None, after=sha, before=ZERO, deleted=False,
                     repository="owner/app")


def test_a_delivery_wakes_the_waiting_worker_and_stop_wakes_it_to_end(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    queue = RecordingQueue(store)
    executor = Executor(store)
    worker = Worker(queue, executor)
    worker.start()
    try:
        wait_for(queue.waiting.is_set, timeout=10, what="the worker to wait in take")
        run = queue.submit(_event("a" * 40), "d1")
        wait_for(lambda: executor.executed == [run.number], timeout=10, what="the queued run to be executed")
    finally:
        # Without closing the queue first: stop itself must wake a take that waits without a timeout.
        stopped = worker.stop(timeout=10)
        store.close()
    assert stopped and not worker.running
    assert queue.timeouts and set(queue.timeouts) == {None}


def test_a_worker_stopped_before_it_started_closes_the_queue(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    queue = RunQueue(store)
    try:
        assert Worker(queue, Executor(store)).stop(timeout=1)
        queue.submit(_event("b" * 40), "d2")
        assert queue.take(timeout=None) is None  # closed: returns at once instead of waiting
    finally:
        store.close()
