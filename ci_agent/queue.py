"""The CI run queue: runs live in the ``RunStore``; a condition variable wakes the one worker.

The webhook calls ``accept_nowait`` (``accept`` from a thread when another thread holds the store)
and answers once the run is recorded; the poller calls ``accept``; the worker loops on ``take``.
Everything the worker needs is in the store (the push event is kept in ``run.details["event"]``),
so a queued run is still taken by a restarted agent (``RunStore.mark_unfinished_interrupted`` at
start-up interrupts only the run that was running), and the store stays the one source of truth.

Rules:

- Coalescing keeps the newest commit *by ancestry*, not by arrival order: a delivery can be a
  replay of an old push (the delivery id is not signed), and a replayed old push must never
  supersede a newer one. The queue has no git, so it decides only what needs none: a push to a
  branch supersedes the older *queued* runs of that branch **for the same commit** (a burst of
  redeliveries costs one run). Commits that differ are compared by the pipeline once it has
  fetched them (``ci_agent/release_guard.py``): when the worker takes a branch run, the run is
  superseded by a queued run of its branch whose commit descends from its own, and the queued runs
  whose commits are ancestors of the newest one end superseded with it, in one go. So a burst of
  pushes still builds only its newest commit, whatever order the deliveries came in.
  Superseded runs end with ``finished_at`` set and ``details["superseded_by"]`` (the run that
  covers them, shown as ``superseded_by`` in the run's JSON); a running run is never touched. Tag
  pushes (releases ``vX.Y.Z``) never supersede each other: each one is a release somebody asked
  for explicitly.
- ``take`` claims a queued run and marks it ``running``: among the repositories (run scopes) with
  queued runs and none running, the one served least recently, and its oldest queued run (older
  queued runs of the same branch were superseded already, so this is fair between branches and
  tags). So a burst of pushes to one repository delays another repository's next run by at most
  the run in progress, whatever ``CI_MAX_PARALLEL_RUNS`` is; one repository never has two runs at
  once (they share a checkout folder and decide versions from the same registry tags).
- Everything above is per repository: coalescing and "already released" only look at runs of the
  delivery's own repository (``scope``).
- Delivery ids (``X-GitHub-Delivery``) de-duplicate. GitHub reuses the id when a person presses
  "Redeliver". A redelivery of a run that ended ``failed`` or ``interrupted`` queues a **new** run
  (somebody pressed the button to retry it: that is how a failed checkout or push is re-run without
  a new commit), unless its tests failed (below). A redelivery of a run that is ``queued``,
  ``running``, ``succeeded`` or ``superseded`` is a duplicate and creates nothing (a superseded
  push is covered by the newer push of its branch).
  The store keeps delivery ids unique, so the id moves to the retry (the old run keeps it in
  ``details["delivery_id"]`` and points at the retry with ``details["retried_by"]``): pressing the
  button again while the retry is queued or running is again a duplicate.
- A push of a commit whose tests failed in a run of this agent, to the same ref and under the same
  test settings, is a duplicate of that run (with a ``reason``), whatever its delivery id, a
  redelivery included: a replay must not run the tests, email and set a status again
  (``ci_agent/failed_tests.py``).
- A branch push of a commit that a run of this agent already released (``succeeded`` with a
  version) is a duplicate of that run, whatever its delivery id: a replayed body costs one
  query. The pipeline's own check against the registry (``ci_agent/release_guard.py``) still
  catches what this store does not know (releases made elsewhere, a wiped state folder).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from loguru import logger

from ci_agent.errors import WebhookRejected
from ci_agent.failed_tests import earlier_failure, failure_reason
from ci_agent.payload import PushEvent
from shared.errors import StoreError
from shared.runstore import DuplicateDelivery, Run, RunStore

KIND = "ci"
RETRYABLE = frozenset({"failed", "interrupted"})
_QUEUED_SCAN_LIMIT = 10_000


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Submission:
    """What ``accept`` did: ``run`` is the new run, or the earlier one when ``duplicate`` (``reason``: why, when
    it is not the same delivery or release)."""

    run: Run
    duplicate: bool
    reason: str | None = None


@dataclass(eq=False)
class _Ticket:
    """One delivery waiting to be written by whichever ``accept`` call holds the lock next."""

    event: PushEvent
    delivery_id: str | None
    source: str | None = None
    scope: str | None = None
    done: bool = False
    result: Submission | None = None
    error: Exception | None = None


class RunQueue:
    """Queue CI runs in ``store`` and hand them to one worker, oldest first."""

    def __init__(
        self, store: RunStore, *, clock: Callable[[], datetime] = _utc_now,
        report: Callable[[Run], None] = lambda _: None, tests_key: str | None = None,
        tests_keys: Callable[[str | None], str | None] | None = None,
    ) -> None:
        self._store = store
        # The test settings (ci_agent/failed_tests.py): a commit whose tests failed under them is not queued
        # again. ``tests_keys(scope)``: each repository's own; ``tests_key``: one for every run.
        self._tests_keys = tests_keys if tests_keys is not None else (lambda _scope: tests_key)
        self._report = report  # the commit status of a queued run (ci_agent/commit_status.py)
        self._clock = clock
        self._condition = threading.Condition()
        self._closed = False
        self._pending: list[_Ticket] = []
        self._pending_lock = threading.Lock()
        # scope -> when it was last served (a counter): who is next among the repositories.
        self._served: dict[str | None, int] = {}
        self._claims = 0
        self._log = logger.bind(agent="ci", component="queue")

    def submit(self, event: PushEvent, delivery_id: str | None = None, *, scope: str | None = None) -> Run:
        """Queue ``event``; for a duplicate delivery return the earlier run instead."""
        return self.accept(event, delivery_id, scope=scope).run

    def accept(
        self, event: PushEvent, delivery_id: str | None = None, *, source: str | None = None, scope: str | None = None
    ) -> Submission:
        """Queue ``event`` unless ``delivery_id`` was seen already (see the module docstring).

        ``source`` (e.g. ``"poll"``) is kept in the new run's ``details["source"]``; ``scope`` is the
        repository the run is for (``RepoTarget.name``).

        Group commit: deliveries that arrive while another one is being written wait for the lock,
        and whoever gets it next writes every waiting delivery in one store transaction. A burst of
        a hundred deliveries then costs a few disk syncs instead of two hundred.
        """
        ticket = _Ticket(event, delivery_id, source, scope)
        with self._pending_lock:
            self._pending.append(ticket)
        with self._condition:
            if not ticket.done:
                self._write_pending()
        if ticket.result is None:
            raise ticket.error or StoreError("the delivery was not recorded")
        self._reported(ticket.result, event)
        return ticket.result

    def accept_nowait(
        self, event: PushEvent, delivery_id: str | None = None, *, source: str | None = None, scope: str | None = None
    ) -> Submission | None:
        """``accept`` on the calling thread, or ``None`` at once if another thread is using the queue or
        the store right now (the caller then calls ``accept`` from a thread of its own).

        The webhook calls it on the event loop: with the store's commits not waiting for the disk, a
        delivery is recorded in well under a millisecond, less than handing it to a thread costs.
        """
        if not self._condition.acquire(blocking=False):
            return None
        try:
            with self._store.batch_if_free() as free:
                if not free:
                    return None
                submission = self._accept_one(event, delivery_id, source, scope)
            self._condition.notify_all()  # the worker waits in `take` for a new run
        finally:
            self._condition.release()
        self._reported(submission, event)
        return submission

    def _reported(self, submission: Submission, event: PushEvent) -> None:
        if not submission.duplicate and event.branch is not None:
            # Not for a tag: `after` may be an annotated tag object, which has no commit status.
            self._report(submission.run)

    def _write_pending(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
        try:
            with self._store.batch():
                for ticket in batch:
                    try:
                        ticket.result = self._accept_one(ticket.event, ticket.delivery_id, ticket.source, ticket.scope)
                    except Exception as exc:
                        ticket.error = exc
        except Exception as exc:
            # The commit itself failed: nothing of this batch was recorded, whatever each item said.
            for ticket in batch:
                ticket.result, ticket.error = None, exc
        finally:
            # Settle every ticket even when a BaseException (shutdown) cut the batch short, so
            # no waiting delivery is left without an answer.
            for ticket in batch:
                if ticket.result is None and ticket.error is None:
                    ticket.error = StoreError("the delivery was not recorded: the agent is stopping")
                ticket.done = True
            self._condition.notify_all()

    def _accept_one(
        self, event: PushEvent, delivery_id: str | None, source: str | None = None, scope: str | None = None
    ) -> Submission:
        earlier = None if delivery_id is None else self._store.find_by_delivery(delivery_id)
        if earlier is not None and earlier.status not in RETRYABLE:
            self._log.info("delivery {} repeats run {}; nothing queued", delivery_id, earlier.number)
            return Submission(earlier, duplicate=True)
        released = self._store.find_released(KIND, event.after, scope=scope) if event.branch is not None else None
        if released is not None:
            self._log.info("{} at {} was released as {} by run {}; nothing queued", event.ref, event.after[:12],
                           released.version, released.number)
            return Submission(released, duplicate=True)
        key = self._tests_keys(scope)
        if key is not None and (failed := earlier_failure(self._store, KIND, event, key, scope)):
            reason = failure_reason(event, failed)
            self._log.info("{} at {}: {}; nothing queued", event.ref, event.after[:12], reason)
            return Submission(failed, duplicate=True, reason=reason)
        if earlier is not None:
            self._release_delivery(earlier)
        details: dict[str, Any] = {"event": event.to_details()}
        if earlier is not None:
            details["retry_of"] = earlier.number
        if source is not None:
            details["source"] = source
        try:
            run = self._store.create(
                kind=KIND, commit=event.after, ref=event.ref, delivery_id=delivery_id, details=details, scope=scope
            )
        except DuplicateDelivery as exc:
            # Another process sharing the store won the race for this delivery.
            return Submission(exc.existing, duplicate=True)
        except BaseException:
            if earlier is not None:
                self._store.update(earlier.number, delivery_id=delivery_id, details=earlier.details)
            raise
        if earlier is not None:
            self._store.update(earlier.number, details={**earlier.details, "delivery_id": delivery_id,
                                                       "retried_by": run.number})
            self._log.info("delivery {} redelivered after run {} {}: run {} retries it",
                           delivery_id, earlier.number, earlier.status, run.number)
        if event.branch is not None:
            for old in self._store.supersede_queued(KIND, event.ref, run.number, commit=event.after, scope=scope):
                self._log.info("run {} superseded by run {}", old.number, run.number)
        self._log.info("run {} queued for {} at {}", run.number, event.ref, event.after[:12])
        return Submission(run, duplicate=False)

    def take(self, timeout: float | None = None) -> tuple[Run, PushEvent] | None:
        """Claim the next queued run (see the module docstring) and mark it running; ``None`` after
        ``timeout`` s or once closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not self._closed:
                claimed = self._claim_oldest()
                if claimed is not None:
                    return claimed
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._condition.wait(remaining)
            return None

    def pending(self) -> list[Run]:
        """Queued CI runs, oldest first."""
        return list(reversed(self._store.list(limit=_QUEUED_SCAN_LIMIT, status="queued", kind=KIND)))

    def done(self) -> None:
        """A run ended: a ``take`` waiting because its repository was busy may go on."""
        with self._condition:
            self._condition.notify_all()

    def close(self) -> None:
        """Wake every ``take`` and make it return ``None`` from now on (shutdown)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def _release_delivery(self, earlier: Run) -> None:
        self._store.update(earlier.number, delivery_id=None)

    def _claim_next(self) -> Run | None:
        busy = self._store.running_scopes(KIND)
        heads = [run for run in self._store.oldest_queued_per_scope(KIND) if run.scope not in busy]
        heads.sort(key=lambda run: (self._served.get(run.scope, -1), run.number))
        for head in heads:
            run = self._store.claim_queued(head.number)
            if run is not None:
                self._claims += 1
                self._served[run.scope] = self._claims
                return run
        return None

    def _claim_oldest(self) -> tuple[Run, PushEvent] | None:
        while (run := self._claim_next()) is not None:
            try:
                event = PushEvent.from_details(dict(run.details.get("event") or {}))
            except (WebhookRejected, KeyError, TypeError, ValueError) as exc:
                # Only a hand-edited or corrupt database gets here; fail the run rather than the worker.
                self._store.update(run.number, status="failed", finished_at=self._clock(),
                                   error=f"stored push event is unusable: {exc}")
                self._log.error("run {} has an unusable stored event: {}", run.number, exc)
                continue
            return run, event
        return None
