"""Idle agents side by side: ``cd-agent watch`` and ouroboros, ``ci-agent serve`` and ``webhook``.

All four run at once over the same window: CPU is utime + stime from /proc over the window (% of one
core), RSS the median of samples taken every few seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.idle_cpu import cpu_seconds, rss_mib
from bench.peers.table import Row, load_now


@dataclass
class Idle:
    label: str
    pid: int
    cpu_percent: float = 0.0
    rss: list[float] | None = None


def measure_idle(processes: list[Idle], seconds: float, every: float = 5.0) -> list[float]:
    """Fills each process's CPU % and RSS samples over ``seconds``; returns the load averages seen."""
    loads = [load_now()]
    start = {p.pid: cpu_seconds(p.pid) for p in processes}
    for p in processes:
        p.rss = [rss_mib(p.pid)]
    began = time.monotonic()
    while (left := began + seconds - time.monotonic()) > 0:
        time.sleep(min(every, left))
        for p in processes:
            assert p.rss is not None
            p.rss.append(rss_mib(p.pid))
        loads.append(load_now())
    elapsed = time.monotonic() - began
    for p in processes:
        p.cpu_percent = 100 * (cpu_seconds(p.pid) - start[p.pid]) / elapsed
    return loads


def idle_rows(ours_cd: Idle, ouroboros: Idle, ours_ci: Idle, webhook: Idle, loads: list[float]) -> list[Row]:
    def row(metric: str, unit: str, peer: str, ours: list[float], theirs: list[float]) -> Row:
        return Row(metric, unit, peer, ours, theirs, list(loads))

    return [
        row("idle `cd-agent watch` RSS (30 s poll, app up to date)", "MiB", "ouroboros",
            ours_cd.rss or [], ouroboros.rss or []),
        row("idle `cd-agent watch` CPU (% of a core)", "%", "ouroboros",
            [ours_cd.cpu_percent], [ouroboros.cpu_percent]),
        row("idle `ci-agent serve` CPU (% of a core)", "%", "webhook", [ours_ci.cpu_percent], [webhook.cpu_percent]),
        row("idle `ci-agent serve` RSS", "MiB", "webhook", ours_ci.rss or [], webhook.rss or []),
    ]
