"""The run worker: one daemon thread taking queued runs and executing them one at a time.

Runs are serialised here, which is also what keeps two runs from deciding the same version. An
unexpected error in a run marks that run failed and the thread goes on with the next one.
"""

from __future__ import annotations

import threading
from typing import Protocol

from loguru import logger

from ci_agent.payload import PushEvent
from shared.runstore import Run


class RunSource(Protocol):
    """What the worker takes runs from (``ci_agent.queue.RunQueue``)."""

    def take(self, timeout: float | None = None) -> tuple[Run, PushEvent] | None: ...


class RunExecutor(Protocol):
    """What runs them (``ci_agent.pipeline.Pipeline``)."""

    def execute(self, run: Run, event: PushEvent) -> Run: ...

    def fail(self, run: Run, message: str) -> Run: ...


class Worker:
    """Takes runs from ``queue`` and hands them to ``pipeline``, one at a time, on one thread."""

    def __init__(self, queue: RunSource, pipeline: RunExecutor, *, poll_interval: float = 1.0) -> None:
        self.queue = queue
        self.pipeline = pipeline
        self.poll_interval = poll_interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = logger.bind(agent="ci", component="worker")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="ci-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the run in progress (if any) ends; False if the thread is still busy at ``timeout``.

        Closing the queue as well wakes a ``take`` that is waiting; otherwise this waits out the poll.
        """
        self._stopping.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _loop(self) -> None:
        self._log.info("worker started")
        while not self._stopping.is_set():
            try:
                item = self.queue.take(timeout=self.poll_interval)
            except Exception as exc:
                self._log.opt(exception=exc).error("cannot take the next run: {}", exc)
                self._stopping.wait(self.poll_interval)
                continue
            if item is not None:
                self.run_one(*item)
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
