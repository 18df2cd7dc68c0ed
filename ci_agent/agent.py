"""Everything ``ci-agent`` runs, built once from ``CiSettings``: store, queue, pipeline, worker, web app.

What only a run uses (the pipeline with its Docker SDK, requests, registry and git clients) is built
when the first run needs it, not at start: an idle ``ci-agent serve`` never imports the Docker SDK.
Python keeps what it imported, so after the first run the agent holds it like before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger

from ci_agent.commit_status import CommitStatusReporter, reporter_from_settings
from ci_agent.failed_tests import tests_key
from ci_agent.payload import PushEvent
from ci_agent.poller import Poller, poller_for
from ci_agent.queue import KIND, RunQueue
from ci_agent.settings import CiSettings
from ci_agent.worker import Worker
from shared.notify import Notifier, notifier_from_settings
from shared.runstore import Run, RunStore, StoreSync

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ci_agent.pipeline import Pipeline

# The run store of the CI agent: a 202 means the delivery's run is committed to the SQLite WAL, in the
# kernel's page cache. That survives the agent crashing or being killed at any point; a power cut or
# a kernel crash in the seconds before the kernel writes it back can lose it (see shared/runstore.py).
STORE_SYNC: StoreSync = "normal"


class PipelineOnDemand:
    """The pipeline, built by ``build`` the first time a run needs it; its effects closed by :meth:`close`.

    Implements the worker's ``RunExecutor``, so the worker thread is what builds it (and pays the
    imports, once), never the event loop answering webhooks.
    """

    def __init__(self, build: Callable[[ExitStack], Pipeline]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._pipeline: Pipeline | None = None
        self._closers = ExitStack()

    def get(self) -> Pipeline:
        with self._lock:
            if self._pipeline is None:
                self._pipeline = self._build(self._closers)
            return self._pipeline

    @property
    def built(self) -> bool:
        return self._pipeline is not None

    def execute(self, run: Run, event: PushEvent) -> Run:
        return self.get().execute(run, event)

    def fail(self, run: Run, message: str) -> Run:
        return self.get().fail(run, message)

    def close(self) -> None:
        with self._lock:
            self._closers.close()


@dataclass
class CiAgent:
    settings: CiSettings
    store: RunStore
    queue: RunQueue
    notifier: Notifier
    runs: PipelineOnDemand
    statuses: CommitStatusReporter

    @property
    def pipeline(self) -> Pipeline:
        return self.runs.get()

    def app(self) -> FastAPI:
        from ci_agent.webhook import create_app

        return create_app(self.settings, self.store, self.queue)

    def worker(self) -> Worker:
        return Worker(self.queue, self.runs)

    def poller(self) -> Poller | None:
        """The repository poller when ``CI_POLL_INTERVAL`` is set (``ci_agent/poller.py``), else ``None``."""
        return None if self.settings.ci_poll_interval is None else poller_for(self.settings, self.store, self.queue,
                                                                              self.notifier)

    def recover(self) -> None:
        """At start-up: a run a crash left ``running`` becomes ``interrupted``; queued runs stay queued."""
        for run in self.store.mark_unfinished_interrupted(kind=KIND):
            logger.bind(agent="ci").warning("run {} was left unfinished by a crash: marked interrupted", run.number)
            self.statuses.report(run)


@contextmanager
def open_agent(settings: CiSettings) -> Iterator[CiAgent]:
    """Build the agent; on exit wait (bounded) for queued emails and close every connection."""
    with ExitStack() as stack:
        store = RunStore(settings.state_dir / "runs.sqlite3", sync=STORE_SYNC)
        stack.callback(store.close)
        statuses = reporter_from_settings(settings)
        stack.callback(statuses.close)
        queue = RunQueue(store, report=statuses.report, tests_key=tests_key(settings))
        stack.callback(queue.close)
        # Built now, not with the pipeline: a bad NOTIFY_URLS or SMTP setting must stop the start.
        notifier = notifier_from_settings(settings)
        stack.callback(notifier.close)

        def build(closers: ExitStack) -> Pipeline:
            return _pipeline(settings, store, notifier, statuses, closers)

        runs = PipelineOnDemand(build)
        stack.callback(runs.close)
        yield CiAgent(settings, store, queue, notifier, runs, statuses)


def _pipeline(
    settings: CiSettings, store: RunStore, notifier: Notifier, statuses: CommitStatusReporter, closers: ExitStack
) -> Pipeline:
    from ci_agent.builder import DockerGateway
    from ci_agent.git import GitRunner
    from ci_agent.pipeline import Pipeline
    from shared.registry import RegistryClient

    registry = RegistryClient(settings.image, username=settings.registry_username, password=settings.registry_password)
    closers.callback(registry.close)
    docker = DockerGateway(
        username=settings.registry_username,
        password=settings.registry_password,
        build_timeout=settings.ci_build_timeout,
        build_host=settings.ci_build_docker_host,
        fallback_local=settings.ci_build_fallback_local,
    )
    closers.callback(docker.close)
    return Pipeline(settings, store, notifier, GitRunner(), docker, registry, report=statuses.report)
