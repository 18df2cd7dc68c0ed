"""Everything ``ci-agent`` runs, built once from ``CiSettings``: store, queue, pipeline, worker, web app."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from loguru import logger

from ci_agent.builder import DockerGateway
from ci_agent.commit_status import CommitStatusReporter, reporter_from_settings
from ci_agent.git import GitRunner
from ci_agent.pipeline import Pipeline
from ci_agent.poller import Poller, poller_for
from ci_agent.queue import KIND, RunQueue
from ci_agent.settings import CiSettings
from ci_agent.webhook import create_app
from ci_agent.worker import Worker
from shared.notify import Notifier, notifier_from_settings
from shared.registry import RegistryClient
from shared.runstore import RunStore


@dataclass
class CiAgent:
    settings: CiSettings
    store: RunStore
    queue: RunQueue
    notifier: Notifier
    pipeline: Pipeline
    statuses: CommitStatusReporter

    def app(self) -> FastAPI:
        return create_app(self.settings, self.store, self.queue)

    def worker(self) -> Worker:
        return Worker(self.queue, self.pipeline)

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
        store = RunStore(settings.state_dir / "runs.sqlite3")
        stack.callback(store.close)
        statuses = reporter_from_settings(settings)
        stack.callback(statuses.close)
        queue = RunQueue(store, report=statuses.report)
        stack.callback(queue.close)
        notifier = notifier_from_settings(settings)
        stack.callback(notifier.close)
        registry = RegistryClient(
            settings.image, username=settings.registry_username, password=settings.registry_password
        )
        stack.callback(registry.close)
        docker = DockerGateway(
            username=settings.registry_username,
            password=settings.registry_password,
            build_timeout=settings.ci_build_timeout,
        )
        stack.callback(docker.close)
        pipeline = Pipeline(settings, store, notifier, GitRunner(), docker, registry, report=statuses.report)
        yield CiAgent(settings, store, queue, notifier, pipeline, statuses)
