"""``GET /metrics`` of the CI agent's private listener: the Prometheus text format, from its run history.

Read from the run store at every scrape (runs are never deleted from it, so the counters only grow)::

    picicd_ci_runs_total{status}            finished runs by outcome (succeeded, failed, superseded, interrupted)
    picicd_ci_run_duration_seconds          a histogram of finished runs' durations (start to finish)
    picicd_ci_queue_length                  runs waiting
    picicd_ci_running                       runs under way
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ci_agent.queue import KIND
from shared.runstore import FINISHED_STATUSES, RunStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A CI run: seconds (nothing to build) to tens of minutes (a cross-platform build on a Pi).
RUN_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
# Runs read per scrape: far more than a Pi's agent makes between two restarts of Prometheus' view.
SCAN_LIMIT = 100_000


class _RunsCollector(Collector):
    def __init__(self, store: RunStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        runs = self._store.list(limit=SCAN_LIMIT, kind=KIND)
        by_status = CounterMetricFamily("picicd_ci_runs", "Finished CI runs by outcome.", labels=["status"])
        for status in sorted(FINISHED_STATUSES):
            by_status.add_metric([status], sum(1 for run in runs if run.status == status))
        yield by_status
        durations = [run.duration_seconds for run in runs if run.finished and run.duration_seconds is not None]
        buckets = [(_bound(bound), float(sum(1 for d in durations if d <= bound))) for bound in RUN_BUCKETS]
        buckets.append(("+Inf", float(len(durations))))
        histogram = HistogramMetricFamily("picicd_ci_run_duration_seconds", "How long finished CI runs took.")
        histogram.add_metric([], buckets, sum_value=sum(durations))
        yield histogram
        yield GaugeMetricFamily("picicd_ci_queue_length", "CI runs waiting.",
                                value=sum(1 for run in runs if run.status == "queued"))
        yield GaugeMetricFamily("picicd_ci_running", "CI runs under way.",
                                value=sum(1 for run in runs if run.status == "running"))


def metrics_text(store: RunStore) -> bytes:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_RunsCollector(store))
    return generate_latest(registry)


def _bound(bound: float) -> str:
    """A bucket's ``le`` as Prometheus writes it (``30.0``): as ``prometheus_client.utils.floatToGoString``."""
    return repr(float(bound))
