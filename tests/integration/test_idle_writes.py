"""An idle ``cd-agent watch`` writes nothing to storage; a deploy is still recorded at once (issue 23).
Looking at either agent's pages (status page, run API, badge, ``/metrics``) writes nothing either.

The watcher runs as a real process (0.5 s polls, the default ``CD_STATE_FLUSH_INTERVAL`` of 15 min) with
its console in a pipe this test reads, so its own log lines cost it no writes. ``write_bytes`` of
``/proc/PID/io`` counts what it (its threads, and the deploy processes it reaped) sent to storage,
pages of memory-mapped files (SQLite's ``-shm``) included; the state files' sizes and times are
compared as well. The first look at the pages may open a state file the agent did not hold open yet
(32 KiB: SQLite builds the file's wal-index), once per process; every look after it must write 0 bytes.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.idle_writes import page_writes, write_bytes
from shared.runstore import RunStore
from tests.support.cd_apps import CdWorld, clean_environ, state_json, version_of
from tests.support.ci_agent_server import StartAgent
from tests.support.polling import wait_for
from tests.support.ports import free_port

# Alone (tests/support/parallel.py): a count of bytes written while idle is a measurement.
pytestmark = [pytest.mark.docker, pytest.mark.exclusive("measures what an idle watcher writes")]

IDLE_POLLS = 8


class PipedWatch:
    """``cd-agent watch`` at DEBUG, its console read into ``lines`` (a pipe: no file written by the agent)."""

    def __init__(self, environ: dict[str, str], cwd: Path) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cd_agent", "watch"], env=clean_environ(environ), cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.decode(errors="replace"))

    def idle_polls(self) -> int:
        return sum(1 for line in list(self.lines) if " poll: " in line and "nothing newer" in line)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        code = self.process.wait(timeout=30)
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


@pytest.fixture
def piped_watches() -> Iterator[list[PipedWatch]]:
    started: list[PipedWatch] = []
    yield started
    for watch in started:
        if watch.process.poll() is None:
            watch.process.kill()
        watch.stop()


def state_files(world: CdWorld) -> dict[str, tuple[int, int]]:
    folder = world.target().paths.state.parent
    return {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(folder.iterdir())}


def test_idle_polls_write_nothing_and_a_deploy_is_recorded_at_once(
    cd_world: CdWorld, piped_watches: list[PipedWatch]
) -> None:
    world = cd_world
    world.releases.push("1.0.0")
    listener_port = free_port()
    environ = world.environ(CD_POLL_INTERVAL="0.5", LOG_LEVEL="DEBUG", CD_DASHBOARD_PORT=str(listener_port))
    del environ["CD_STATE_FLUSH_INTERVAL"]  # the default: 15 min
    watch = PipedWatch(environ, world.root)
    piped_watches.append(watch)

    wait_for(lambda: world.served() == "1.0.0", timeout=90, what="1.0.0 served")
    wait_for(lambda: version_of(state_json(world)["current"]) == "1.0.0", timeout=30, what="1.0.0 recorded")
    wait_for(lambda: watch.idle_polls() >= 1, timeout=30, what="a first idle poll")
    first_recorded = state_json(world)["last_poll_at"]

    # the idle window: IDLE_POLLS polls that find nothing new
    polls, lines = watch.idle_polls(), len(watch.lines)
    files, written = state_files(world), write_bytes(watch.process.pid)
    wait_for(lambda: watch.idle_polls() >= polls + IDLE_POLLS, timeout=60, what=f"{IDLE_POLLS} idle polls")
    assert write_bytes(watch.process.pid) - written == 0
    assert state_files(world) == files
    idle_lines = watch.lines[lines:]
    assert idle_lines and all("| DEBUG " in line for line in idle_lines), "".join(idle_lines)
    assert state_json(world)["last_poll_at"] == first_recorded  # still the one written 15 min ago (or less)

    # a deploy is recorded by the time it is served, whatever the flush interval
    world.releases.push("1.0.1")
    wait_for(lambda: version_of(state_json(world)["current"]) == "1.0.1", timeout=90, what="1.0.1 recorded")
    assert world.served() == "1.0.1"

    # at the stop, the last poll is written: `cd-agent status` shows it after the agent has gone
    polled_before_stop = watch.idle_polls()
    wait_for(lambda: watch.idle_polls() > polled_before_stop, timeout=30, what="an idle poll after the deploy")

    # looking at the status page writes nothing (the deploy's process, reaped, wrote what it wrote)
    app = world.target().name
    with RunStore(world.target().paths.runs) as runs:
        deploy = runs.list(limit=1, kind="deploy")[0]
    pages = (("/", HTML), ("/", "application/json"), (f"/apps/{app}", HTML), (f"/apps/{app}", "application/json"),
             (f"/apps/{app}/runs/{deploy.number}/log", "*/*"), (f"/badge/{app}.svg", "*/*"), ("/metrics", "*/*"))
    url = f"http://127.0.0.1:{listener_port}"
    page_writes(watch.process.pid, url, pages)  # the first look: the run store opened once
    assert page_writes(watch.process.pid, url, pages) == dict.fromkeys(_looked_at(pages), 0)
    assert watch.stop() == 0
    assert state_json(world)["last_poll_at"] > first_recorded


def test_looking_at_the_ci_dashboard_writes_nothing(start_ci_agent: StartAgent, tmp_path: Path) -> None:
    # a finished run with its log, there before the agent starts (it opens the store and keeps it)
    log = tmp_path / "logs" / "run-0001.log"
    log.parent.mkdir(mode=0o700)
    log.write_text("tests passed\n")
    with RunStore(tmp_path / "state" / "runs.sqlite3") as runs:
        run = runs.create(kind="ci", status="running", ref="refs/heads/main", commit="a" * 40)
        runs.update(run.number, status="succeeded", version="0.1.0", log_path=str(log))
    agent = start_ci_agent()
    pages = (("/", HTML), ("/runs", "application/json"), (f"/runs/{run.number}", HTML),
             (f"/runs/{run.number}", "application/json"), (f"/runs/{run.number}/log", "*/*"),
             ("/badge.svg", "*/*"), ("/metrics", "*/*"))
    process = agent.process.process
    assert process is not None
    page_writes(process.pid, agent.dashboard_url, pages)  # the first look (what an agent does once)
    assert page_writes(process.pid, agent.dashboard_url, pages) == dict.fromkeys(_looked_at(pages), 0)


HTML = "text/html"


def _looked_at(pages: tuple[tuple[str, str], ...]) -> list[str]:
    return [f"{path} ({accept})" for path, accept in pages]
