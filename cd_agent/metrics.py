"""``GET /metrics`` of the CD listener: the Prometheus text format, from ``prometheus_client``.

Counted in the watcher's process since it started (Prometheus' ``rate()`` and ``increase()`` handle the
reset at a restart)::

    picicd_cd_polls_total{app}                     polls (tags lists asked for)
    picicd_cd_poll_errors_total{app}               polls that failed (registry away, rate limit, ...)
    picicd_cd_deploys_total{app,outcome}           deploys by outcome (deployed, rolled_back, failed, noop,
                                                   refused: a release this machine cannot run)
    picicd_cd_deploy_duration_seconds{app}         a histogram of their durations
    picicd_cd_hints_total{app}                     push notifications naming the app's repository
    picicd_cd_early_polls_total{app}               polls those hints brought forward

Read from each app's state at every scrape::

    picicd_cd_last_successful_poll_timestamp_seconds{app}
    picicd_cd_deployed_info{app,version}           1 for the version running

The library's registry is private to this object (never the global one: no process or platform
collectors, nothing another import registers); ``prometheus_client`` costs about 1 MiB of the idle
watcher's RSS (``bench/idle_memory.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from cd_agent.listener import Answer, Request
from cd_agent.state_readers import StateReaders

if TYPE_CHECKING:
    from cd_agent.apps import Targets
    from cd_agent.hints import HintCounts

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Deploys take seconds (a swap) to minutes (a pull on a slow link, a long health check).
DEPLOY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, float("inf"))


class CdMetrics:
    """The CD agent's metrics; ``targets`` and ``hint_counts`` are read at each scrape, the states through
    ``readers`` (kept open: a scrape writes nothing; the status pages share them)."""

    def __init__(
        self, targets: Callable[[], Targets], hint_counts: Callable[[], dict[str, HintCounts]]
    ) -> None:
        self.readers = StateReaders()
        self.registry = CollectorRegistry(auto_describe=True)
        self.polls = Counter("picicd_cd_polls", "Registry polls (tags lists asked for).", ["app"],
                             registry=self.registry)
        self.poll_errors = Counter("picicd_cd_poll_errors", "Polls that failed.", ["app"], registry=self.registry)
        self.deploys = Counter("picicd_cd_deploys", "Deploys by outcome.", ["app", "outcome"], registry=self.registry)
        self.deploy_seconds = Histogram(
            "picicd_cd_deploy_duration_seconds", "How long deploys took, whatever their outcome.", ["app"],
            buckets=DEPLOY_BUCKETS, registry=self.registry,
        )
        self.registry.register(_StateCollector(targets, hint_counts, self.readers))

    def page(self, request: Request) -> Answer | None:
        if request.path != "/metrics" or request.method not in ("GET", "HEAD"):
            return None
        return Answer(200, generate_latest(self.registry), CONTENT_TYPE)

    def deployed(self, app: str, outcome: str, seconds: float) -> None:
        self.deploys.labels(app, outcome).inc()
        self.deploy_seconds.labels(app).observe(seconds)


class _StateCollector(Collector):
    """What each app's state file says now, and the hints' counters (kept by ``cd_agent.hints.EarlyPolls``)."""

    def __init__(
        self, targets: Callable[[], Targets], hint_counts: Callable[[], dict[str, HintCounts]], readers: StateReaders
    ) -> None:
        self._targets = targets
        self._hint_counts = hint_counts
        self._readers = readers

    def collect(self) -> Iterator[Metric]:
        last_poll = GaugeMetricFamily(
            "picicd_cd_last_successful_poll_timestamp_seconds", "When the app's last successful poll was (Unix time).",
            labels=["app"],
        )
        deployed = InfoMetricFamily("picicd_cd_deployed", "The version each app runs.", labels=["app"])
        targets = self._targets()
        self._readers.retain(path for target in targets.apps for path in (target.paths.state, target.paths.runs))
        for target in targets.apps:
            with self._readers.deploy_state(target.paths.state) as state:
                if state is None:
                    continue
                current, polled, error = state.current, state.last_poll_at, state.last_error
            if polled is not None and error is None:
                last_poll.add_metric([target.name], polled.timestamp())
            if current is not None:
                deployed.add_metric([target.name], {"version": current.version})
        yield last_poll
        yield deployed
        counts = self._hint_counts()
        hints = CounterMetricFamily(
            "picicd_cd_hints", "Push notifications that named the app's repository.", labels=["app"]
        )
        early = CounterMetricFamily(
            "picicd_cd_early_polls", "Polls that push notifications brought forward.", labels=["app"]
        )
        for app, count in sorted(counts.items()):
            hints.add_metric([app], count.received)
            early.add_metric([app], count.early_polls)
        yield hints
        yield early

