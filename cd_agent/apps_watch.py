"""``cd-agent watch`` for every app: one process, each app polled at its own interval, deploys bounded.

Each app has its own ``cd_agent.watcher.Watcher`` (its poll, backoff and rate-limit pacing, as with one
app) running in a thread of this process, so a slow registry or a failing app never holds up another
app's polls. Deploys still happen in short-lived child processes (``cd_agent.child_deploys``), one at
a time per app, and at most ``CD_MAX_PARALLEL_DEPLOYS`` apps deploy at once (a slot is held by the
thread while its child runs; the other apps keep polling).

Apps on the same registry share one connection pool (the transport); bearer tokens are scoped to one
repository by the registry, so each app keeps its own.

SIGHUP reloads the apps file (``reload``): an app added is watched from then on, an app removed is no
longer watched (its container keeps running), an app changed is watched with its new settings once
its current poll or deploy is over (a deploy in progress is never interrupted); a file that does not
load leaves everything as it was, with one error line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack

import httpx
from loguru import logger

from cd_agent.apps import AppTarget, Targets
from cd_agent.child_deploys import ChildDeploys, ChildError
from cd_agent.early_pull import EarlyPull, engine_socket
from cd_agent.hints import EarlyPolls, HintCounts
from cd_agent.metrics import CdMetrics
from cd_agent.state import DeployState
from cd_agent.tls_on_demand import TlsOnDemand
from cd_agent.watcher import RolloutOutcome, Watcher, app_logger
from shared.errors import PiCicdError
from shared.registry import RateLimit, RegistryClient

# How often a thread waiting for a deploy slot looks at its stop request.
_SLOT_WAIT_S = 1.0


class _SharedTransport(httpx.BaseTransport):
    """One registry's connection pool, lent to each app's client: closing a client leaves it open."""

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self._transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._transport.handle_request(request)

    def close(self) -> None:
        pass  # closed by AppsWatch, after the last app


class _CountedTags:
    """An app's registry client whose tags lists (one a poll) and failures are counted for /metrics, and
    whose answers tell the app's gate (``early``) whether the tags a hint named are there yet."""

    def __init__(self, registry: RegistryClient, app: str, metrics: CdMetrics, early: EarlyPolls) -> None:
        self._registry = registry
        self._early = early
        self._polls = metrics.polls.labels(app)
        self._errors = metrics.poll_errors.labels(app)

    @property
    def rate_limit(self) -> RateLimit | None:
        return self._registry.rate_limit

    def list_tags(self) -> list[str]:
        self._polls.inc()
        with self._errors.count_exceptions():
            tags = self._registry.list_tags()
        self._early.listed(tags)
        return tags

    def manifest_digest(self, tag: str) -> str | None:
        with self._errors.count_exceptions():
            digest = self._registry.manifest_digest(tag)
        if digest is None:
            self._early.no_manifest(tag)
        return digest


class _CountedDeploys:
    """An app's deploys, each counted by outcome and timed for /metrics."""

    def __init__(self, deploys: _SlottedDeploys, app: str, metrics: CdMetrics) -> None:
        self._deploys = deploys
        self._app = app
        self._metrics = metrics

    def roll_out(self, version: str, digest: str, deployed: str | None) -> RolloutOutcome:
        started = time.monotonic()
        outcome = "error"  # the deploy process could not even run
        try:
            result = self._deploys.roll_out(version, digest, deployed)
            outcome = result.deploy.outcome if result.deploy is not None else "refused"
            return result
        finally:
            self._metrics.deployed(self._app, outcome, time.monotonic() - started)


class _SlottedDeploys:
    """An app's child deploys, each holding one of the agent's deploy slots while it runs."""

    def __init__(self, deploys: ChildDeploys, slots: threading.Semaphore) -> None:
        self._deploys = deploys
        self._slots = slots

    def roll_out(self, version: str, digest: str, deployed: str | None) -> RolloutOutcome:
        self._take_slot(f"deploying {version}")
        try:
            return self._deploys.roll_out(version, digest, deployed)
        finally:
            self._slots.release()

    def reconcile(self) -> str:
        self._take_slot("reconciling")
        try:
            return self._deploys.reconcile()
        finally:
            self._slots.release()

    def _take_slot(self, what: str) -> None:
        if self._slots.acquire(blocking=False):
            return
        app_logger(self._deploys.target.name).info("{} waits for a deploy slot (CD_MAX_PARALLEL_DEPLOYS)", what)
        # A stop request does not skip the deploy: a watcher stops between polls, never inside one.
        while not self._slots.acquire(timeout=_SLOT_WAIT_S):
            pass


class _AppThread:
    """One app's watcher in its own thread; ``stop`` ends it after its current poll or deploy."""

    def __init__(
        self, watch: AppsWatch, targets: Targets, target: AppTarget, *, reconcile_first: bool,
        after: _AppThread | None = None,
    ) -> None:
        self.target = target
        self._reconcile_first = reconcile_first
        self.stop = threading.Event()
        self._watch = watch
        self._after = after  # the thread this one replaces (a changed app): it finishes first
        self._flush_interval = targets.settings.cd_state_flush_interval
        children = ChildDeploys(
            targets.settings_of(target), target, siblings=targets.siblings(target), python=watch.python,
            early_pull=watch.early_pull,
        )
        self._deploys = _SlottedDeploys(children, watch.slots)
        # Its waits between polls: a registry's push notification ends one early (cd_agent/hints.py), and
        # the deploy process a release found then would need is started as that poll begins.
        self.early = EarlyPolls(targets.settings.cd_hook_min_interval, on_early=children.prepare)
        self._thread = threading.Thread(target=self._run, name=f"watch-{target.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Stop after the current poll or deploy; a wait between polls ends at once."""
        self.stop.set()
        self.early.wake()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.ident is not None:  # never started: the start-up reconcile of another app failed
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def reconcile(self) -> None:
        """Finish or undo an interrupted deploy of this app. ``ChildError`` when its deploy process could not
        even open (Docker out of reach, the state unreadable)."""
        try:
            self._deploys.reconcile()
        except ChildError as exc:
            if exc.stage == "open":
                raise
            # The watcher's first deploy reconciles again; the app may well be serving.
            app_logger(self.target.name).error("reconcile at start-up failed: {}; watching anyway", exc)

    def _run(self) -> None:
        log = app_logger(self.target.name)
        if self._after is not None:
            self._after.join()
        if self.stop.is_set():
            return
        if self._reconcile_first:
            try:
                self.reconcile()
            except ChildError as exc:
                log.error("reconcile failed: {}; watching anyway", exc)
        try:
            with ExitStack() as stack:
                # Poll bookkeeping in memory, written every CD_STATE_FLUSH_INTERVAL and at the stop:
                # an idle poll writes nothing.
                state = stack.enter_context(DeployState(
                    self.target.paths.state, poll_flush_interval=self._flush_interval,
                ))
                registry = stack.enter_context(RegistryClient(
                    self.target.image, username=self.target.registry_username,
                    password=self.target.registry_password, transport=self._watch.transport_for(self.target),
                ))
                metrics = self._watch.metrics
                Watcher(
                    self.target, _CountedTags(registry, self.target.name, metrics, self.early), None, state,
                    rollout=_CountedDeploys(self._deploys, self.target.name, metrics), sleep=self.early.wait,
                ).run_forever(self.stop)
        except PiCicdError as exc:
            log.error("stopped watching: {}", exc)
        except Exception as exc:  # a thread that dies silently would stop watching an app for good
            log.opt(exception=exc).error("stopped watching after an unexpected error: {!r}", exc)


class AppsWatch:
    """Every app of ``targets`` watched in this process until ``stop``; ``load`` re-reads them at a reload."""

    def __init__(self, targets: Targets, *, load: Callable[[], Targets], python: str) -> None:
        self.targets = targets
        self.python = python
        socket = engine_socket()
        self.early_pull = EarlyPull(socket) if socket is not None else None
        self.slots = threading.BoundedSemaphore(targets.settings.cd_max_parallel_deploys)
        self._load = load
        self._apps: dict[str, _AppThread] = {}
        self._retired: list[_AppThread] = []
        self._transports: dict[str, TlsOnDemand] = {}
        self._lock = threading.Lock()
        self.metrics = CdMetrics(lambda: self.targets, self.hint_counts)

    def transport_for(self, target: AppTarget) -> httpx.BaseTransport:
        """The connection pool of ``target``'s registry, shared by every app on it."""
        with self._lock:
            key = target.image.api_url
            if key not in self._transports:
                self._transports[key] = TlsOnDemand()
            return _SharedTransport(self._transports[key])

    def hint(self, pushes: Mapping[str, frozenset[str]]) -> list[str]:
        """A registry says ``pushes`` (repository: tags) happened: each app watching one of those repositories
        polls early. Their names."""
        with self._lock:
            apps = [app for app in self._apps.values() if app.target.image.repository in pushes]
        for app in apps:
            app.early.hint(pushes[app.target.image.repository])
        return sorted(app.target.name for app in apps)

    def hint_counts(self) -> dict[str, HintCounts]:
        """Each watched app's hints received and early polls, for /metrics."""
        with self._lock:
            return {name: app.early.counts() for name, app in self._apps.items()}

    def run(self, stop: threading.Event, wake: threading.Event, reload_requested: threading.Event) -> None:
        """Reconcile every app, watch them until ``stop``; a set ``reload_requested`` (SIGHUP) reloads."""
        names = ", ".join(app.describe() for app in self.targets.apps)
        logger.info("watching {} app(s): {} (at most {} deploying at once)", len(self.targets.apps), names,
                    self.targets.settings.cd_max_parallel_deploys)
        try:
            for target in self.targets.apps:
                app = _AppThread(self, self.targets, target, reconcile_first=False)
                app.reconcile()  # before any poll: a crash left any app half-deployed, at any phase
                with self._lock:  # the listener's threads read it (hint)
                    self._apps[target.name] = app
            for app in self._apps.values():
                app.start()
            while not stop.is_set():
                wake.wait()
                wake.clear()
                if reload_requested.is_set() and not stop.is_set():
                    reload_requested.clear()
                    self.reload()
        finally:
            self._stop_all()

    def reload(self) -> None:
        """Re-read the apps; keep the running configuration when they do not load."""
        try:
            new = self._load()
        except PiCicdError as exc:
            logger.error("reload refused, still watching {}: {}", self.targets.names(), exc)
            return
        old = self.targets
        everything_changed = new.settings != old.settings
        if new.settings.cd_max_parallel_deploys != old.settings.cd_max_parallel_deploys:
            logger.warning("reload: CD_MAX_PARALLEL_DEPLOYS changes at the next start, not at a reload")
        new_names = {app.name for app in new.apps}
        for name in [name for name in self._apps if name not in new_names]:
            with self._lock:
                app = self._apps.pop(name)
            app.request_stop()
            self._retired.append(app)
            logger.info("reload: {} is no longer watched (its container keeps running)", name)
        for target in new.apps:
            current = self._apps.get(target.name)
            if current is not None and current.target == target and not everything_changed:
                continue
            if current is not None:
                current.request_stop()
                self._retired.append(current)
            app = _AppThread(self, new, target, reconcile_first=True, after=current)
            with self._lock:
                self._apps[target.name] = app
            app.start()
            if current is None:
                logger.info("reload: now watching {}", target.describe())
            else:
                logger.info("reload: {} changed; its new settings apply after its current poll or deploy", target.name)
        self.targets = new

    def _stop_all(self) -> None:
        apps = list(self._apps.values()) + self._retired
        for app in apps:
            app.request_stop()
        for app in apps:
            app.join()  # a deploy under way finishes first
        for transport in self._transports.values():
            transport.close()
        logger.info("watcher stopped")
