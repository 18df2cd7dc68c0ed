"""Resident memory of an idle ``cd-agent watch`` process (what it costs to leave running on a Pi).

    python -m bench.idle_memory               # throw-away registry with an empty repository, 10 s idle
    python -m bench.idle_memory --seconds 60
    python -m bench.idle_memory --apprise     # with NOTIFY_URLS set, so the watcher loads Apprise

Needs dockerd (the watcher's start-up reconcile runs in a child process that connects to it). The
repository has no tags, so the watcher only polls; nothing is deployed (a deploy runs in a child
process too, so it would not change the watcher's own RSS). For scale it also prints a bare interpreter,
one that imports the web stack the CI agent uses (which the watcher must not import), and each
dependency alone. Every line ends with the 1-minute load average when it was taken: numbers from a
loaded machine run high.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.registry_server import start_registry

REPO = Path(__file__).resolve().parents[1]


DEPENDENCIES = [
    ("docker SDK (+requests)", "import docker"),
    ("httpx", "import cd_agent, httpx"),
    ("pydantic", "import pydantic"),
    ("cd_agent.settings (models)", "import cd_agent.settings"),
    ("loguru (asyncio deferred)", "import cd_agent, loguru"),
    # what `cd-agent watch` imports itself, and what its deploy process adds
    ("the watcher's modules", "import cd_agent.cli, cd_agent.child_deploys, cd_agent.tls_on_demand, shared.registry"),
    ("a deploy process's modules", "import cd_agent.deploy_child"),
    # the CD listener (issue 21): the standard library's http.server, then prometheus_client for /metrics
    ("the watcher + the listener", "import cd_agent.cli, cd_agent.child_deploys, cd_agent.tls_on_demand, "
     "shared.registry, cd_agent.listener, cd_agent.status_pages"),
    ("the watcher + listener + metrics", "import cd_agent.cli, cd_agent.child_deploys, "
     "cd_agent.tls_on_demand, shared.registry, cd_agent.listener, cd_agent.status_pages, cd_agent.metrics"),
]


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def idle_python(code: str) -> tuple[int, int]:
    """RSS of an interpreter that ran ``code``, read once it says it is done (imports take a while on a
    loaded machine)."""
    process = subprocess.Popen(
        [sys.executable, "-c", code + "\nprint('ready', flush=True)\nimport time; time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"python -c {code!r} failed")
        return rss_kib(process.pid)
    finally:
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to let the watcher idle")
    parser.add_argument("--interval", default="1", help="CD_POLL_INTERVAL of the watcher")
    parser.add_argument(
        "--apprise", action="store_true", help="set NOTIFY_URLS (a json:// URL nothing is sent to while idle)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="idle-memory-") as scratch:
        root = Path(scratch)
        server = start_registry(root / "registry")
        environ = {
            key: value for key, value in os.environ.items()
            if not key.startswith(("CD_", "SMTP_", "NOTIFY_", "REGISTRY_", "LOG_", "STATE_DIR"))
        }
        environ.update(
            CD_IMAGE=f"{server.host}/bench/idle", CD_CONTAINER_NAME="picicd-bench-idle",
            CD_POLL_INTERVAL=args.interval, STATE_DIR=str(root / "state"), LOG_DIR=str(root / "logs"),
            PYTHONPATH=str(REPO),
        )
        if args.apprise:
            environ["NOTIFY_URLS"] = "json://127.0.0.1:9/bench"
        log = (root / "watch.log").open("wb")
        watch = subprocess.Popen(
            [sys.executable, "-m", "cd_agent", "watch"], env=environ, cwd=root, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            time.sleep(args.seconds)
            if watch.poll() is not None:
                print((root / "watch.log").read_text(), file=sys.stderr)
                print(f"cd-agent watch exited early with {watch.returncode}", file=sys.stderr)
                return 1
            rss, peak = rss_kib(watch.pid)
            measured_load = load()
        finally:
            watch.terminate()
            watch.wait(30)
            log.close()
            server.stop()

    what = " with NOTIFY_URLS" if args.apprise else ""
    print(f"cd-agent watch{what}, idle {args.seconds:g}s: RSS {rss / 1024:6.1f} MiB (peak {peak / 1024:.1f} MiB)"
          f"   [{measured_load}]")
    bare, _ = idle_python("pass")
    print(f"python, nothing imported:       RSS {bare / 1024:6.1f} MiB   [{load()}]")
    web, _ = idle_python("import fastapi, uvicorn")
    print(f"python + fastapi + uvicorn:     RSS {web / 1024:6.1f} MiB (for scale; the watcher does not import them)"
          f"   [{load()}]")
    # Where the watcher's memory goes: almost all of it is imported code, so each dependency alone.
    for what, code in DEPENDENCIES:
        alone, _ = idle_python(code)
        print(f"  python + {what:28}RSS {alone / 1024:6.1f} MiB (+{(alone - bare) / 1024:.1f})   [{load()}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
