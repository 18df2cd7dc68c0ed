"""CPU and resident memory of an idle ``ci-agent serve`` and an idle ``cd-agent watch``.

    python -m bench.idle_cpu                  # 60 s each, measured at the same time
    python -m bench.idle_cpu --seconds 120 --poll 30

Both agents are real processes with throw-away settings: ci-agent with a local bare repository and
a test registry (it only listens: nothing is delivered), cd-agent watching an empty repository of
that registry every ``--poll`` seconds (nothing is deployed). After a settling time the CPU time
each used (utime + stime from /proc) is read at the start and at the end of the window; the printed
percentage is of one core.
``strace -f -c -p PID`` over the same window shows what wakes an agent. Needs dockerd (both agents
connect to it at start; the watcher from its start-up reconcile process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.ports import free_port
from tests.support.registry_server import start_registry

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="idle-cpu-") as scratch:
        root = Path(scratch)
        registry = start_registry(root / "registry")
        subprocess.run(["git", "init", "--quiet", "--bare", str(root / "app.git")], check=True)
        port, dashboard = free_port(), free_port()
        agents = {
            "ci-agent serve": (["ci_agent", "serve"], _environ(
                CI_REPO_URL=str(root / "app.git"), CI_IMAGE=f"{registry.host}/bench/ci", CI_WEBHOOK_SECRET="x" * 32,
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
        finally:
            for process in processes.values():
                process.terminate()
            for process in processes.values():
                process.wait(30)
            registry.stop()

    print(f"idle for {elapsed:.0f} s after {args.settle:g} s of start-up "
          f"(CPU % of one core; clock tick {1 / TICKS:g} s; 1-minute load average {os.getloadavg()[0]:.2f})")
    for name in processes:
        print(f"  {name:28} CPU {100 * used[name] / elapsed:5.2f} % ({used[name]:.2f} s)   RSS {rss[name]:5.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
