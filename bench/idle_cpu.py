"""CPU and resident memory of an idle ``ci-agent serve`` and an idle ``cd-agent watch``.

    python -m bench.idle_cpu                  # 60 s each, measured at the same time
    python -m bench.idle_cpu --seconds 120 --poll 30
    python -m bench.idle_cpu --no-run         # skip the ci-agent run after the window

Both agents are real processes with throw-away settings: ci-agent tracking a local sample project
(the busybox app of tests/support/git_repos.py) and pushing to a test registry, cd-agent watching an
empty repository of that registry every ``--poll`` seconds (nothing is deployed). After a settling
time the CPU time each used (utime + stime from /proc) is read at the start and at the end of the
window; the printed percentage is of one core. Then the ci-agent gets one signed push: its run
(checkout, test, build, push) imports what an idle agent does not, and Python keeps what it
imported, so the agent's RSS is printed again once the run has ended.
``strace -f -c -p PID`` over the same window shows what wakes an agent. Needs dockerd (the run
builds with it; the watcher's start-up reconcile process connects to it). Every line carries the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from pydantic import SecretStr

from ci_agent.signature import sign
from tests.support.ci_agent_server import push_payload
from tests.support.git_repos import make_git_project
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.registry_server import start_registry

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
SECRET = "x" * 32


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) and of the children it waited for (the watcher's deploy
    processes), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(value) for value in fields[11:15]) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def one_run(port: int, dashboard: int, payload: dict[str, object], timeout: float = 300) -> dict[str, object]:
    """Deliver ``payload`` as a signed push to the agent on ``port`` and wait for its run to end."""
    raw = json.dumps(payload).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/webhook", data=raw, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(SecretStr(SECRET), raw),
    })
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - loopback
        number = json.load(answer)["run"]

    def finished() -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/runs/{number}", timeout=10) as answer:
            run: dict[str, object] = json.load(answer)
        return run if run["finished_at"] else {}

    return wait_for(finished, timeout=timeout, interval=0.5, what=f"run {number} to end")


def _environ(**settings: str) -> dict[str, str]:
    prefixes = ("CI_", "CD_", "SMTP_", "NOTIFY_", "REGISTRY_", "LOG_", "STATE_DIR")
    environ = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    return {**environ, "PYTHONPATH": str(REPO), **settings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="the measuring window")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds to let start-up finish first (imports take a while on a loaded machine)")
    parser.add_argument("--poll", default="30", help="CD_POLL_INTERVAL of the watcher")
    parser.add_argument("--no-run", action="store_true", help="skip the ci-agent run after the idle window")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="idle-cpu-") as scratch:
        root = Path(scratch)
        registry = start_registry(root / "registry")
        (root / "git").mkdir()
        project = make_git_project(root / "git")
        sample = project.commit_sample()
        image = f"{registry.host}/bench/ci"
        port, dashboard = free_port(), free_port()
        agents = {
            "ci-agent serve": (["ci_agent", "serve"], _environ(
                CI_REPO_URL=project.url, CI_IMAGE=image, CI_WEBHOOK_SECRET=SECRET,
                CI_TEST_COMMAND="sh /tests/run.sh",
                CI_HOST="127.0.0.1", CI_PORT=str(port), CI_DASHBOARD_PORT=str(dashboard),
                STATE_DIR=str(root / "ci-state"), LOG_DIR=str(root / "ci-logs"),
            )),
            f"cd-agent watch ({args.poll} s poll)": (["cd_agent", "watch"], _environ(
                CD_IMAGE=f"{registry.host}/bench/idle", CD_CONTAINER_NAME="picicd-bench-idle-cpu",
                CD_POLL_INTERVAL=args.poll, STATE_DIR=str(root / "cd-state"), LOG_DIR=str(root / "cd-logs"),
            )),
        }
        processes: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name, (command, environ) in agents.items():
                log = (root / f"{command[0]}.log").open("wb")
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", *command], env=environ, cwd=root, stdout=log, stderr=subprocess.STDOUT
                )
            time.sleep(args.settle)
            for name, process in processes.items():
                if process.poll() is not None:
                    print(f"{name} exited early with {process.returncode}:", file=sys.stderr)
                    print((root / f"{agents[name][0][0]}.log").read_text(), file=sys.stderr)
                    return 1
            start = {name: cpu_seconds(process.pid) for name, process in processes.items()}
            began = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - began
            used = {name: cpu_seconds(process.pid) - start[name] for name, process in processes.items()}
            rss = {name: rss_mib(process.pid) for name, process in processes.items()}
            load = os.getloadavg()[0]
            after_run = None
            if not args.no_run:
                ci = processes["ci-agent serve"]
                run = one_run(port, dashboard, push_payload(project, sample, "initial sample app"))
                # Let the run's last answers and threads settle before reading the agent's memory.
                time.sleep(5)
                after_run = (run, rss_mib(ci.pid), os.getloadavg()[0])
        finally:
            for process in processes.values():
                process.terminate()
            for process in processes.values():
                process.wait(30)
            registry.stop()
            subprocess.run(["docker", "image", "rm", "--force", f"{image}:latest", f"{image}:ci-test"],
                           capture_output=True, check=False)

    print(f"idle for {elapsed:.0f} s after {args.settle:g} s of start-up "
          f"(CPU % of one core; clock tick {1 / TICKS:g} s; load {load:.2f})")
    for name in processes:
        print(f"  {name:28} CPU {100 * used[name] / elapsed:5.2f} % ({used[name]:.2f} s)   RSS {rss[name]:5.1f} MiB")
    if after_run is not None:
        run, rss_after, load_after = after_run
        print(f"  {'ci-agent serve, one run later':28} RSS {rss_after:5.1f} MiB "
              f"(run {run['number']} {run['status']} {run['error'] or ''}; load {load_after:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
