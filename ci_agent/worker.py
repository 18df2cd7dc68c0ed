"""The run worker: ``CI_MAX_PARALLEL_RUNS`` daemon threads (1 by default) taking queued runs.

Each thread executes one run at a time; the queue never hands out two runs of one repository at
once (``ci_agent/queue.py``), which is what keeps two runs from deciding the same version. An
unexpected error in a run marks that run failed and the thread goes on with the next one.

Idle, the thread sleeps in ``take`` until a delivery is queued or the queue is closed (``stop``
closes it): no timer wakes it, so an idle agent costs no CPU.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from loguru import logger

from ci_agent.payload import PushEvent
from shared.runstore import Run

RETRY_AFTER_SECONDS = 1.0


class RunSource(Protocol):
    """What the worker takes runs from (``ci_agent.queue.RunQueue``)."""

    def take(self, timeout: float | None = None) -> tuple[Run, PushEvent] | None: ...

    def done(self) -> None:
        """A run ended (another thread may now take a run of its repository)."""

    def close(self) -> None:
        """Wake every ``take`` and make it return ``None`` from now on."""


class RunExecutor(Protocol):
    """What runs them (``ci_agent.pipeline.Pipeline``)."""

    def execute(self, run: Run, event: PushEvent) -> Run: ...

    def fail(self, run: Run, message: str) -> Run: ...


class Worker:
    """Takes runs from ``queue`` and hands them to ``pipeline``, one at a time on each of ``threads`` threads."""

    def __init__(
        self, queue: RunSource, pipeline: RunExecutor, *, poll_interval: float | None = None,
        retry_after: float = RETRY_AFTER_SECONDS, threads: int = 1,
    ) -> None:
        self.queue = queue
        self.pipeline = pipeline
        # None: wait for the queue to say something changed. A number also looks every that many
        # seconds (only worth it when something else writes the store).
        self.poll_interval = poll_interval
        self.retry_after = retry_after
        self.threads = max(1, threads)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._log = logger.bind(agent="ci", component="worker")

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        if self.running:
            return
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._loop, name="ci-worker" if n == 0 else f"ci-worker-{n + 1}", daemon=True)
            for n in range(self.threads)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the run in progress (if any) ends; False if the thread is still busy at ``timeout``.

        The queue is closed, which wakes a ``take`` that is waiting: a stopped worker takes no more runs.
        """
        self._stopping.set()
        self.queue.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.running

    def _loop(self) -> None:
        self._log.info("worker started")
        while not self._stopping.is_set():
            try:
                item = self.queue.take(timeout=self.poll_interval)
            except Exception as exc:
                self._log.opt(exception=exc).error("cannot take the next run: {}", exc)
                self._stopping.wait(self.retry_after)
                continue
            if item is not None:
                try:
                    self.run_one(*item)
                finally:
                    self.queue.done()
        self._log.info("worker stopped")

    def run_one(self, run: Run, event: PushEvent) -> None:
        """Execute one run; whatever goes wrong outside its steps still ends it ``failed``."""
        try:
            self.pipeline.execute(run, event)
        except Exception as exc:
            self._log.opt(exception=exc).error("run {} broke outside its steps: {}", run.number, exc)
            try:
                self.pipeline.fail(run, f"internal error: {type(exc).__name__}: {exc}")
            except Exception as inner:
                self._log.opt(exception=inner).error("run {} could not be marked failed: {}", run.number, inner)
