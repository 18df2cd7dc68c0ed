"""Bytes an idle agent writes to storage: ``cd-agent watch`` and ``ci-agent serve`` (polling), per idle hour.

    python -m bench.idle_writes                    # 60 s window, CD polls every 1 s, CI every 5 s
    python -m bench.idle_writes --seconds 300 --cd-poll 1 --ci-poll 5

Both agents are real processes with throw-away settings and nothing to do: the watcher's app already
runs the newest tag of its repository (tags pushed straight through the registry API, the state seeded
with that release), and the CI agent polls (``CI_POLL_INTERVAL``) a local repository where nothing moves
(its seen refs seeded with the head, so no first run). After a settling time, ``write_bytes`` of
``/proc/PID/io`` is read at the start and the end of the window: it counts what the process (all its
threads, and the children it has reaped: ``git ls-remote``, the watcher's deploy processes) sent to the
storage layer, including pages of memory-mapped files it dirtied (SQLite's ``-shm``). The polls in the
window are counted from the agents' DEBUG lines, so the printed bytes per poll and per idle hour are per
*poll actually made*, scaled to the agents' default intervals (CD 60 s, CI the ``--ci-poll`` given).
Linux only; the watcher's start-up reconcile connects to dockerd (it finds nothing to do). Keep the
scratch folder on the real disk (``TMPDIR``): tmpfs writes are not counted.

After the window, the pages each agent serves are looked at twice (the CD listener's status page as
HTML and JSON, an app's page, its badge and ``/metrics``; the CI dashboard's run list,
run API, a run, the badge and ``/metrics``) and the bytes each look wrote are printed: the first look
opens the state files the agent did not hold open yet, the second is what every later one costs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench.idle_cpu import _environ as idle_environ
from bench.poll_cost import populate
from tests.support.git_repos import make_git_project
from tests.support.ports import free_port
from tests.support.registry_server import start_registry

CD_DEFAULT_INTERVAL = 60.0


def write_bytes(pid: int) -> int:
    """``write_bytes`` of ``/proc/PID/io``: the process, its threads and its reaped children."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"no write_bytes for {pid}")


def _environ(**settings: str) -> dict[str, str]:
    # bench.idle_cpu's throw-away environment, with the DEBUG lines that count the polls
    return idle_environ(LOG_LEVEL="DEBUG", **settings)


def seed_cd_state(state_dir: Path, version: str) -> None:
    """The app already runs ``version``, deployed by run 1: an idle watcher finds nothing newer."""
    from cd_agent.state import DeployState, Release
    from shared.runstore import RunStore

    with DeployState(state_dir / "cd.sqlite3") as state:
        state.set_current(Release(version, None, None))
    with RunStore(state_dir / "runs.sqlite3") as runs:
        run = runs.create(kind="deploy", status="running")
        runs.update(run.number, status="succeeded", version=version)


def page_writes(pid: int, base_url: str, pages: Sequence[tuple[str, str]]) -> dict[str, int]:
    """The bytes process ``pid`` wrote to storage while answering each of ``pages`` (path, Accept)."""
    written = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for path, accept in pages:
            before = write_bytes(pid)
            answer = client.get(path, headers={"Accept": accept})
            answer.raise_for_status()
            written[f"{path} ({accept})"] = write_bytes(pid) - before
    return written


HTML = "text/html"
CD_APP = "picicd-bench-idle-writes"
CD_PAGES = (("/", HTML), ("/", "application/json"), (f"/apps/{CD_APP}", HTML), (f"/badge/{CD_APP}.svg", "*/*"),
            ("/metrics", "*/*"))
CI_PAGES = (("/", HTML), ("/runs", "application/json"), ("/badge.svg", "*/*"), ("/metrics", "*/*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="the measuring window")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds to let start-up finish first")
    parser.add_argument("--cd-poll", default="1", help="CD_POLL_INTERVAL of the watcher")
    parser.add_argument("--ci-poll", default="5", help="CI_POLL_INTERVAL of the CI agent (5 s at least)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="idle-writes-") as scratch:
        root = Path(scratch)
        registry = start_registry(root / "registry")
        populate(registry, "bench/idle", 3)
        seed_cd_state(root / "cd-state", "1.0.2")
        cd_port, ci_dashboard_port = free_port(), free_port()
        (root / "git").mkdir()
        project = make_git_project(root / "git")
        head = project.commit_sample()
        # The CI agent has seen the head already: its polls find nothing (no first run in the window).
        (root / "ci-state").mkdir(mode=0o700)
        (root / "ci-state" / "poll-refs.json").write_text(json.dumps({"refs": {"refs/heads/main": head}}))
        agents = {
            "cd-agent watch": (["cd_agent", "watch"], _environ(
                CD_IMAGE=f"{registry.host}/bench/idle", CD_CONTAINER_NAME=CD_APP,
                CD_POLL_INTERVAL=args.cd_poll, STATE_DIR=str(root / "cd-state"), LOG_DIR=str(root / "cd-logs"),
                CD_DASHBOARD_PORT=str(cd_port),
            )),
            "ci-agent serve (polling)": (["ci_agent", "serve"], _environ(
                CI_REPO_URL=project.url, CI_IMAGE=f"{registry.host}/bench/ci", CI_WEBHOOK_SECRET="x" * 32,
                CI_TEST_COMMAND="true", CI_POLL_INTERVAL=args.ci_poll, CI_HOST="127.0.0.1",
                CI_PORT=str(free_port()), CI_DASHBOARD_PORT=str(ci_dashboard_port),
                STATE_DIR=str(root / "ci-state"), LOG_DIR=str(root / "ci-logs"),
            )),
        }
        processes: dict[str, subprocess.Popen[bytes]] = {}
        # The logs go to a pipe the bench reads, not to a file: a file would count as the agent's writes.
        logs: dict[str, list[str]] = {name: [] for name in agents}
        try:
            for name, (command, environ) in agents.items():
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", *command], env=environ, cwd=root, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
                threading.Thread(target=_collect, args=(processes[name], logs[name]), daemon=True).start()
            time.sleep(args.settle)
            for name, process in processes.items():
                if process.poll() is not None:
                    print(f"{name} exited early with {process.returncode}:", file=sys.stderr)
                    print("".join(logs[name]), file=sys.stderr)
                    return 1
            start = {name: write_bytes(process.pid) for name, process in processes.items()}
            polls_before = {name: _polls(logs[name]) for name in processes}
            before = {name: list(logs[name]) for name in processes}
            began = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - began
            written = {name: write_bytes(process.pid) - start[name] for name, process in processes.items()}
            polls = {name: _polls(logs[name]) - polls_before[name] for name in processes}
            info_lines = {name: _info_lines(logs[name][len(before[name]):]) for name in processes}
            urls = {"cd-agent watch": (f"http://127.0.0.1:{cd_port}", CD_PAGES),
                    "ci-agent serve (polling)": (f"http://127.0.0.1:{ci_dashboard_port}", CI_PAGES)}
            looks = {name: [page_writes(processes[name].pid, url, pages) for _ in range(2)]
                     for name, (url, pages) in urls.items()}
        finally:
            for process in processes.values():
                process.terminate()
            for process in processes.values():
                process.wait(30)
            registry.stop()

    defaults = {"cd-agent watch": CD_DEFAULT_INTERVAL, "ci-agent serve (polling)": float(args.ci_poll)}
    print(f"idle for {elapsed:.0f} s after {args.settle:g} s of start-up (CD poll {args.cd_poll} s, CI poll "
          f"{args.ci_poll} s)")
    for name in processes:
        # The CI poller of an older agent logs nothing per idle poll: count its polls from the interval.
        made = polls[name] or (int(elapsed / defaults[name]) if name.startswith("ci") else 0)
        per_poll = written[name] / made if made else float("nan")
        per_hour = per_poll * 3600 / defaults[name]
        print(f"  {name:26} {written[name]:>9} B in {made:>3} polls = {per_poll:8.0f} B/poll; "
              f"{per_hour / 1024:8.1f} KiB per idle hour at a {defaults[name]:g} s interval; "
              f"INFO+ log lines {info_lines[name]}")
        if not made:
            print(f"    no poll seen in the window; its log ends:\n{''.join(logs[name][-15:])}")
        first, then = looks[name]
        for page in first:
            print(f"    GET {page:42} wrote {first[page]:>7} B at the first look, {then[page]:>7} B at the next")
    return 0


def _collect(process: subprocess.Popen[bytes], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.decode(errors="replace"))


def _polls(log: list[str]) -> int:
    """Idle polls logged at DEBUG: the watcher's "poll: N tags, nothing newer", the poller's "poll: nothing moved"."""
    return sum(1 for line in list(log) if " poll: " in line and ("nothing newer" in line or "nothing moved" in line))


def _info_lines(log: list[str]) -> int:
    return sum(1 for line in list(log) if any(f"| {level}" in line for level in ("INFO ", "WARNING", "ERROR")))


if __name__ == "__main__":
    sys.exit(main())
