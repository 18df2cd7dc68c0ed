"""What do users lose while cd-agent replaces the app? Both strategies, under the same probe.

    python -m bench.swap_downtime [--rounds 3] [--strategy swap|blue-green|both] [--health url|running|healthcheck]

Needs dockerd, Debian's docker-registry (a throwaway registry is started on a loopback port) and, for
blue-green, the local Caddy image (``scripts/proxy-image``). Two clients hit the app's published
port every 20 ms (``tests/support/switch_probe.py``): ``fresh`` opens a new connection per request,
``keepalive`` reuses one. For each round: an upgrade, a manual rollback, and a failed deploy (a
release whose process exits). Prints, per strategy and action, the failed requests of each client
and the longest gap between two good answers (the outage a user sees; ~0.02 s is no gap at all),
beside the machine's 1-minute load average while it was measured (the numbers stretch with it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from cd_agent.report import DeployReport
from tests.support.cd_apps import AppReleases, CdWorld, Variant
from tests.support.docker_env import DockerJanitor
from tests.support.proxy_world import proxy_image
from tests.support.registry_server import RegistryServer, start_registry
from tests.support.switch_probe import SwitchProbe

CLIENTS = ("fresh", "keepalive")
ACTIONS = ("upgrade", "rollback", "failed deploy")
Row = dict[str, tuple[int, float]]
LOAD = "load"


def measure(world: CdWorld, action: Callable[[], DeployReport], expect: str) -> Row:
    with SwitchProbe(world.url, expected={"1.0.0", "1.1.0"}, interval=0.02) as probe:
        action()
        probe.wait_for_body(expect, timeout=30)
        probe.wait_for_more(5)
    row = {client: (sum(1 for s in probe.of(client) if not s.ok), probe.max_gap(client)) for client in CLIENTS}
    row[LOAD] = (0, os.getloadavg()[0])
    return row


def run_strategy(
    strategy: str, client: Any, janitor: DockerJanitor, root: Path, registry: RegistryServer, args: argparse.Namespace
) -> dict[str, list[Row]]:
    world = CdWorld(client, janitor, AppReleases(client, registry, janitor), root)
    try:
        variant: Variant = "healthcheck" if args.health == "healthcheck" else "good"
        world.releases.push("1.0.0", variant)
        world.releases.push("1.1.0", variant)
        world.releases.push("1.2.0", "broken")
        overrides = {"CD_HEALTH_URL": world.url} if args.health == "url" else {}
        if strategy == "blue-green":
            overrides.update(CD_STRATEGY="blue-green", CD_PROXY_IMAGE=proxy_image(), CD_PROXY_GRACE="2")
        deployer = world.deployer(CD_HEALTH_GRACE="1", **overrides)
        deployer.deploy("1.0.0")
        results: dict[str, list[Row]] = {action: [] for action in ACTIONS}
        for _ in range(args.rounds):
            results["upgrade"].append(measure(world, lambda: deployer.deploy("1.1.0", force=True), "1.1.0"))
            results["rollback"].append(measure(world, deployer.rollback, "1.0.0"))
            results["failed deploy"].append(measure(world, lambda: deployer.deploy("1.2.0", force=True), "1.0.0"))
        return results
    finally:
        world.close()
        janitor.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strategy", choices=["swap", "blue-green", "both"], default="both")
    parser.add_argument("--health", choices=["url", "running", "healthcheck"], default="url")
    args = parser.parse_args(argv)
    strategies = ["swap", "blue-green"] if args.strategy == "both" else [args.strategy]

    client = docker.from_env(version="auto")
    janitor = DockerJanitor(client)
    with tempfile.TemporaryDirectory(prefix="swap-downtime-") as scratch:
        root = Path(scratch)
        registry = start_registry(root / "registry")
        try:
            results = {s: run_strategy(s, client, janitor, root / s, registry, args) for s in strategies}
        finally:
            registry.stop()
            client.close()
    print(f"health check: {args.health}; {args.rounds} rounds; two probes every 20 ms (new connection; keep-alive)")
    print(f"{'strategy':<11} {'action':<14} {'failed (fresh/keep-alive)':>26} {'longest gap (fresh/keep-alive)':>31}"
          f" {'median gap':>11} {'load (1 min)':>13}")
    for strategy, actions in results.items():
        for action, rows in actions.items():
            failed = "/".join(str(max(row[c][0] for row in rows)) for c in CLIENTS)
            gaps = "/".join(f"{max(row[c][1] for row in rows):.2f}s" for c in CLIENTS)
            median = sorted(max(row[c][1] for c in CLIENTS) for row in rows)[len(rows) // 2]
            loads = [row[LOAD][1] for row in rows]
            load = f"{min(loads):.1f}-{max(loads):.1f}"
            print(f"{strategy:<11} {action:<14} {failed:>26} {gaps:>31} {median:>10.2f}s {load:>13}")
    print("(the worst round of each, and the median round's longest gap; a gap of ~0.02-0.1 s is the probe's own"
          " interval plus this machine's load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
