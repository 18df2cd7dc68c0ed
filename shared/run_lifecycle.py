"""One run of either agent, from open to finish: the bookkeeping every CI run and every deploy shares.

::

    lifecycle = RunLifecycle(store, notifier)
    scope = RunScope("web", log_dir=Path("logs/ci/web"), keep_logs=200)
    with lifecycle.open(run, scope, commit=sha) as opened:   # running, started now, its log file open
        opened.log.info("...")                               # reaches this run's file only
    lifecycle.finish(opened.run, scope, status="failed", failed_step="test", email=email)

``open`` marks the run ``running`` with ``started_at`` and ``log_path`` (``LOG_DIR/…_run-NNNN.log``,
see ``shared.logs.run_log_path``) and opens the run-log sink keyed by the scope's name and the run
number, so two repositories (or two apps) whose runs overlap never write into each other's files.
``finish`` records the end (``finished_at`` set by the lifecycle's clock), sends the notification if
there is one and prunes the scope's old run logs; it never raises for a notification or a prune.
What a run *does* between the two is the agent's own (``ci_agent/pipeline.py``, ``cd_agent/deployer.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.logs import prune_run_logs, run_log, run_log_path
from shared.notify import Email, Notifier
from shared.runstore import Run, RunStatus, RunStore, utc_now

if TYPE_CHECKING:
    import loguru


@dataclass(frozen=True)
class RunScope:
    """Whose runs these are: ``name`` (recorded, and keyed into the log sink), where logs go, how many stay."""

    name: str
    log_dir: Path
    keep_logs: int


@dataclass
class OpenRun:
    """A run between ``open`` and ``finish``: the stored run, its logger and its log file."""

    run: Run
    log: loguru.Logger
    log_path: Path


class RunLifecycle:
    """Opens and finishes runs in ``store``; ``notifier`` sends what ``finish`` is given."""

    def __init__(self, store: RunStore, notifier: Notifier, clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.notifier = notifier
        self.clock = clock

    @contextmanager
    def open(self, run: Run, scope: RunScope, **fields: Any) -> Iterator[OpenRun]:
        """Mark ``run`` running (plus ``fields``), and send what is logged through the yielded logger to its file."""
        started = self.clock()
        path = run_log_path(scope.log_dir, started, run.number)
        run = self.store.update(run.number, status="running", started_at=started, log_path=str(path), **fields)
        with run_log(path, run.number, scope=scope.name) as log:
            yield OpenRun(run, log, path)

    def finish(
        self, run: Run | int, scope: RunScope, *, status: RunStatus, email: Email | None = None, **fields: Any
    ) -> Run:
        """Record the end of ``run`` (``status`` plus ``fields``, finished now), notify, prune old logs."""
        number = run if isinstance(run, int) else run.number
        finished = self.store.update(number, status=status, finished_at=self.clock(), **fields)
        if email is not None:
            self.notifier.notify(email)  # queued: a slow mail server never holds the run up
        prune_run_logs(scope.log_dir, scope.keep_logs)
        return finished
