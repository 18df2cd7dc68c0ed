"""A short soak (issue 23): twenty CI runs and deploys leave the agents' memory and file descriptors
flat, and an idle watcher writes nothing.

The same code as ``python -m bench.soak`` (bench/soak.py): a real ``ci-agent serve`` over a repos file
and a real ``cd-agent watch`` over an apps file of the same busybox apps, a throw-away registry, this
machine's dockerd; failing test suites and a release that exits at once (rolled back) mixed in. "Flat"
is the least-squares slope after the warm-up (within each agent's life) times the runs measured: the
change a trend would make over the soak, within ``bench.soak.TOLERANCES``. No timing is asserted.
"""

from __future__ import annotations

import pytest

from bench.soak import FAIL_EVERY, TOLERANCES, soak, trend

# Alone (tests/support/parallel.py): its memory and descriptor slopes and idle-write count are measurements.
pytestmark = [
    pytest.mark.docker, pytest.mark.slow, pytest.mark.exclusive("measures memory, descriptors and idle writes")
]

APPS = 2
RUNS = 20  # ten rounds: a commit to each app per round
# Six runs of each app: the CI agent's Docker SDK client (one per repository) fills its connection
# pools over its first five or six runs (docker-py keeps a pool per API path, up to 25), and imports,
# caches and the run store settle.
WARM_UP = 12
IDLE_SECONDS = 8


@pytest.mark.timeout(900)  # ~10 s a run on a loaded 2-core machine: a CI run, then a deploy
def test_twenty_runs_and_deploys_leave_memory_and_descriptors_flat_and_an_idle_poll_writes_nothing() -> None:
    with soak(APPS) as running:
        while running.commits < RUNS:
            running.round()
        idle = running.idle(IDLE_SECONDS)
        rows, surprises = running.rows, running.surprises

    assert surprises == []  # each run ended as its commit meant: failed at its tests or succeeded

    assert rows[-1]["failed_runs"] == RUNS // FAIL_EVERY, rows[-1]  # every 7th commit fails its tests
    assert rows[-1]["rollbacks"] == 1, rows[-1]  # the 11th commit's release exits at once: rolled back
    table = "\n".join(" ".join(f"{key}={value:g}" for key, value in row.items()) for row in rows)
    for metric in ("ci_rss_mib", "cd_rss_mib", "ci_fds", "cd_fds"):
        found = trend(rows, metric, WARM_UP)
        assert found is not None, table
        assert found.flat(TOLERANCES[metric]), (
            f"{metric} grows {found.slope:.3f} per run ({found.change:.1f} over {found.span} runs, "
            f"tolerance {TOLERANCES[metric]}):\n{table}"
        )
    assert all(row["cd_procs"] == 1 for row in rows), table  # no deploy process outlives its deploy
    assert idle.polls >= APPS * IDLE_SECONDS // 2, idle
    assert idle.cd_bytes == 0, idle
