"""Everything ``ci-agent`` runs, built once from ``CiSettings`` and the repositories: store, queue,
pipelines, worker(s), pollers, web apps.

What only a run uses (the pipeline with its Docker SDK, requests, registry and git clients) is built
when the first run of a repository needs it, not at start: an idle ``ci-agent serve`` never imports
the Docker SDK. Python keeps what it imported, so after the first run the agent holds it like before.

:meth:`CiAgent.reload` (SIGHUP) reads ``CI_REPOS_FILE`` again: a good file replaces the repositories
for every run that starts after it (queued and running runs stay); a bad one changes nothing and
says why in one error line.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loguru import logger

from ci_agent.commit_status import reporter_from_settings
from ci_agent.disk_budget import DiskBudget
from ci_agent.failed_tests import tests_key
from ci_agent.poller import poller_for
from ci_agent.queue import KIND, RunQueue
from ci_agent.repos import LiveTargets, Pollers, RepoPipelines, StatusRouter
from ci_agent.settings import CiSettings
from ci_agent.targets import RepoTarget, RepoTargets, load_targets
from ci_agent.worker import Worker
from shared.errors import PiCicdError, SettingsError
from shared.logs import configure_logging
from shared.notify import Notifier, notifier_from_settings
from shared.runstore import RunStore, StoreSync

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ci_agent.pipeline import Pipeline

# The run store of the CI agent: a 202 means the delivery's run is committed to the SQLite WAL, in the
# kernel's page cache. That survives the agent crashing or being killed at any point; a power cut or
# a kernel crash in the seconds before the kernel writes it back can lose it (see shared/runstore.py).
STORE_SYNC: StoreSync = "normal"

_log = logger.bind(agent="ci")


@dataclass
class CiAgent:
    settings: CiSettings
    targets: LiveTargets
    store: RunStore
    queue: RunQueue
    notifier: Notifier
    runs: RepoPipelines
    statuses: StatusRouter
    pollers: Pollers
    environ: Mapping[str, str] = field(default_factory=dict)

    def pipeline_for(self, name: str | None = None) -> Pipeline:
        """The pipeline of repository ``name`` (default: the first one); ``SettingsError`` for an unknown name."""
        targets = self.targets.current
        target = targets.first if name is None else targets.get(name)
        if target is None:
            raise SettingsError(f"no repository named {name!r}; configured: {', '.join(targets.names)}")
        return self.runs.get(target)

    @property
    def pipeline(self) -> Pipeline:
        return self.pipeline_for(None)

    def app(self) -> FastAPI:
        from ci_agent.webhook import create_app

        return create_app(self.settings, self.store, self.queue, self.targets)

    def dashboard(self) -> FastAPI:
        from ci_agent.dashboard import create_dashboard_app

        return create_dashboard_app(self.settings, self.store, self.targets)

    def worker(self) -> Worker:
        return Worker(self.queue, self.runs, threads=self.settings.ci_max_parallel_runs)

    def start_pollers(self) -> None:
        """A poller for each repository with a ``poll_interval`` (``ci_agent/poller.py``)."""
        self.pollers.follow(self.targets.current)

    def recover(self) -> None:
        """At start-up: a run a crash left ``running`` becomes ``interrupted``; queued runs stay queued."""
        for run in self.store.mark_unfinished_interrupted(kind=KIND):
            _log.warning("run {} was left unfinished by a crash: marked interrupted", run.number)
            self.statuses.report(run)

    def reload(self) -> bool:
        """Read ``CI_REPOS_FILE`` again (SIGHUP); False, with one error line, when it is not usable."""
        if self.settings.ci_repos_file is None:
            _log.info("reload: nothing to read again (CI_REPOS_FILE is not set; the environment is read at start)")
            return False
        try:
            targets = load_targets(self.settings, self.environ)
        except PiCicdError as exc:
            _log.error("reload refused, the repositories stay as they were: {}", exc)
            return False
        secrets = [*self.settings.secret_values(), *targets.secret_values()]
        # New secrets are masked from the first line that could carry them.
        configure_logging("ci", secrets, level=self.settings.log_level)
        if any(target.test_runner == "host" for target in targets):
            # A repository's tests may now run on the host: as at start, nothing of the agent's gives them away.
            from ci_agent.host_env import shield_agent

            shield_agent(secrets)
        self.targets.replace(targets)
        _log.info("reloaded {}: {} repositories ({})", self.settings.ci_repos_file, len(targets),
                  ", ".join(targets.names))
        return True


@contextmanager
def open_agent(
    settings: CiSettings, targets: RepoTargets, environ: Mapping[str, str] | None = None
) -> Iterator[CiAgent]:
    """Build the agent; on exit wait (bounded) for queued emails and close every connection."""
    with ExitStack() as stack:
        # Rows of a store from before repositories had names belong to the first (the only) one.
        store = RunStore(settings.state_dir / "runs.sqlite3", sync=STORE_SYNC, default_scope=targets.first.name)
        stack.callback(store.close)
        if not targets.from_file:
            # One repository: its name follows CI_GITHUB_REPO / CI_IMAGE, and all of the history is its own.
            store.adopt_all(targets.first.name)
        live = LiveTargets(targets)
        statuses = StatusRouter(live, lambda target: reporter_from_settings(settings, target))
        stack.callback(statuses.close)
        # Each repository's test settings: a commit whose tests failed under them is not queued again.
        queue = RunQueue(store, report=statuses.report, tests_keys=lambda scope: _tests_key(live, scope))
        stack.callback(queue.close)
        # Built now, not with the pipeline: a bad NOTIFY_URLS or SMTP setting must stop the start.
        notifier = notifier_from_settings(settings)
        stack.callback(notifier.close)

        # CI_DISK_BUDGET: one for the agent, over every repository it serves now (a reload changes them).
        budget = DiskBudget(settings.ci_disk_budget, lambda: [target.image.name for target in live.current])

        def build(target: RepoTarget, closers: ExitStack) -> Pipeline:
            return _pipeline(settings, target, store, notifier, statuses, closers, live, budget)

        runs = RepoPipelines(live, store, build)
        stack.callback(runs.close)
        pollers = Pollers(lambda target: poller_for(target, store, queue, notifier))
        stack.callback(pollers.stop)
        live.on_replace(lambda _old, new: statuses.follow(new))
        live.on_replace(lambda _old, new: pollers.follow(new))
        yield CiAgent(settings, live, store, queue, notifier, runs, statuses, pollers, dict(environ or {}))


def _tests_key(live: LiveTargets, scope: str | None) -> str | None:
    target = live.current.first if not live.current.from_file else live.current.get(scope)
    return tests_key(target) if target is not None else None


def _pipeline(
    settings: CiSettings, target: RepoTarget, store: RunStore, notifier: Notifier, statuses: StatusRouter,
    closers: ExitStack, live: LiveTargets, budget: DiskBudget,
) -> Pipeline:
    from ci_agent.builder import DockerGateway
    from ci_agent.git import GitRunner
    from ci_agent.pipeline import Pipeline
    from shared.disk import DiskFloor, engine_free_space
    from shared.registry import RegistryClient

    registry = RegistryClient(target.image, username=target.registry_username, password=target.registry_password)
    closers.callback(registry.close)
    docker = DockerGateway(
        username=target.registry_username,
        password=target.registry_password,
        build_timeout=target.build_timeout,
        build_host=target.build_host,
        fallback_local=target.fallback_local,
        table=f"[repos.{target.name}]" if target.from_file else None,
    )
    closers.callback(docker.close)
    # A build engine elsewhere (CI_BUILD_DOCKER_HOST) is not this machine's disk: then nothing is checked.
    disk = DiskFloor(settings.disk_min_free, engine_free_space(docker.data_root, settings.ci_build_docker_host))
    return Pipeline(
        target, store, notifier, GitRunner(), docker, registry, report=statuses.report,
        keep_logs=settings.log_retention_runs,
        # A host-run test sees none of the agent's secrets: its own repository's nor any other's.
        hidden=lambda: [*settings.secret_values(), *live.current.secret_values()],
        disk=disk,
        budget=budget,
    )
