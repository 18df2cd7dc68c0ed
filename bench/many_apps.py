"""What each more app costs one ``cd-agent watch``: idle RSS with 1 and with N apps, idle CPU, requests per poll.

    python -m bench.many_apps                     # 1 vs 10 apps, poll interval 30 s, 60 s idle each
    python -m bench.many_apps --apps 20 --seconds 120

Both watchers are real processes run side by side in one run (same load), each with its own apps file
over a throw-away registry whose repositories hold no tag, so they only poll (a deploy runs in a child
process and would not change the watcher's own RSS). Once every app has polled, the watchers idle for
``--seconds``; RSS (VmRSS) is read at the end, CPU (utime + stime, threads and waited-for children
included) over the window, as a share of one core. Needs dockerd (each app's start-up reconcile runs
in a child process that connects to it).

Requests per poll cycle are counted in-process: one ``Watcher`` per app over one shared, counting
connection pool (as ``cd-agent watch`` shares one pool per registry); a cycle is one poll of every app,
idle and then with a new release of one app. Every line carries the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path

import httpx
from loguru import logger

from bench.idle_cpu import cpu_seconds, rss_mib
from bench.poll_cost import NoDeploy, populate
from cd_agent.apps import AppTarget, load_targets
from cd_agent.state import DeployState, Release
from cd_agent.watcher import Watcher
from shared.registry import RegistryClient
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.registry_server import RegistryServer, start_registry

REPO = Path(__file__).resolve().parents[1]


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def apps_file(path: Path, server: RegistryServer, count: int, interval: str, prefix: str) -> Path:
    tables = [
        f'[apps.{prefix}{index}]\nimage = "{server.host}/bench/{prefix}{index}"\npoll_interval = {interval}\n'
        for index in range(count)
    ]
    path.write_text("\n".join(tables))
    path.chmod(0o600)
    return path


def agent_environ(root: Path, apps: Path) -> dict[str, str]:
    environ = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("CD_", "SMTP_", "NOTIFY_", "REGISTRY_", "LOG_", "STATE_DIR"))
    }
    environ.update(CD_APPS_FILE=str(apps), STATE_DIR=str(root / "state"), LOG_DIR=str(root / "logs"),
                   PYTHONPATH=str(REPO), CD_DASHBOARD_PORT=str(free_port()))
    return environ


def all_polled(environ: dict[str, str]) -> bool:
    for app in load_targets(environ).apps:
        if not app.paths.state.exists():
            return False
        with DeployState(app.paths.state) as state:
            if state.last_poll_at is None:
                return False
    return True


class CountingPool(httpx.BaseTransport):
    """One shared connection pool that counts requests by method and path kind."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.counts: Counter[str] = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        kind = "tags/list" if request.url.path.endswith("/tags/list") else request.url.path.rsplit("/", 2)[-2]
        self.counts[f"{request.method} {kind}"] += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        pass


def requests_per_cycle(server: RegistryServer, root: Path, count: int) -> tuple[Counter[str], Counter[str]]:
    """Requests of one poll of every app: idle, then after a release of app 0."""
    apps = apps_file(root / "count.toml", server, count, "30", "count")
    targets = load_targets(agent_environ(root / "count", apps))
    pool = CountingPool()
    watchers = []
    for target in targets.apps:
        populate(server, target.image.repository, 1)  # 1.0.0, deployed below: an idle poll finds nothing newer
        watchers.append(_watcher(target, pool))
    for _, state in watchers:
        state.set_current(Release("1.0.0"))
    for watcher, _ in watchers:
        watcher.poll_once()
    pool.counts.clear()
    for watcher, _ in watchers:
        watcher.poll_once()
    idle = Counter(pool.counts)
    populate(server, targets.apps[0].image.repository, 2)  # 1.0.1 for app 0
    pool.counts.clear()
    for watcher, _ in watchers:
        watcher.poll_once()
    return idle, Counter(pool.counts)


def _watcher(target: AppTarget, pool: CountingPool) -> tuple[Watcher, DeployState]:
    state = DeployState(target.paths.state)
    client = RegistryClient(target.image, transport=pool)
    return Watcher(target, client, NoDeploy(), state), state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--apps", type=int, default=10, help="apps of the larger watcher (default 10)")
    parser.add_argument("--seconds", type=float, default=60.0, help="idle window once every app has polled")
    parser.add_argument("--interval", default="30", help="poll_interval of every app (default 30)")
    args = parser.parse_args()
    logger.remove()  # the in-process watchers of the request count would log every poll
    logger.add(sys.stderr, level="WARNING")

    with tempfile.TemporaryDirectory(prefix="many-apps-") as scratch:
        root = Path(scratch)
        server = start_registry(root / "registry")
        watches: dict[int, subprocess.Popen[bytes]] = {}
        logs = []
        try:
            environs = {}
            for count in (1, args.apps):
                folder = root / f"agent-{count}"
                folder.mkdir()
                apps = apps_file(folder / "apps.toml", server, count, args.interval, f"a{count}x")
                environs[count] = agent_environ(folder, apps)
                log = (folder / "watch.log").open("wb")
                logs.append(log)
                watches[count] = subprocess.Popen(
                    [sys.executable, "-m", "cd_agent", "watch"], env=environs[count], cwd=folder, stdout=log,
                    stderr=subprocess.STDOUT,
                )
            for count, environ in environs.items():
                wait_for(partial(all_polled, environ), timeout=300, what=f"every one of {count} apps polled")
            began = {count: cpu_seconds(process.pid) for count, process in watches.items()}
            started = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - started
            for count, process in watches.items():
                if process.poll() is not None:
                    print((root / f"agent-{count}" / "watch.log").read_text(), file=sys.stderr)
                    print(f"the watcher of {count} app(s) exited early", file=sys.stderr)
                    return 1
            rss = {count: rss_mib(process.pid) for count, process in watches.items()}
            cpu = {
                count: (cpu_seconds(process.pid) - began[count]) / elapsed * 100 for count, process in watches.items()
            }
            measured = load()
            idle, busy = requests_per_cycle(server, root, args.apps)
        finally:
            for process in watches.values():
                process.terminate()
            for process in watches.values():
                process.wait(60)
            for log in logs:
                log.close()
            server.stop()

    for count in (1, args.apps):
        print(f"cd-agent watch, {count:2d} app(s), poll {args.interval}s, idle {args.seconds:g}s: "
              f"RSS {rss[count]:5.1f} MiB   CPU {cpu[count]:.3f} % of a core   [{measured}]")
    print(f"RSS ratio {args.apps} apps / 1 app: {rss[args.apps] / rss[1]:.3f}   (goal <= 1.15)")
    print(f"requests per poll cycle of {args.apps} apps, idle: {json.dumps(dict(idle))}")
    print(f"requests per poll cycle of {args.apps} apps, one app with a new release: {json.dumps(dict(busy))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
