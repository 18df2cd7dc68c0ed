"""What do users, and the stack's other services, lose while the agent upgrades a stack's web service?

    python -m bench.stack_upgrade [--rounds 1] [--strategy swap|blue-green|compose|all]

Needs dockerd, Debian's docker-registry (a throwaway one on a loopback port), compose (Debian's
``docker-compose`` 1.29 or the v2 plugin) and, for blue-green, the local Caddy image
(``scripts/proxy-image``). The same stack for every strategy (``tests/support/compose_stack.py``): ``db``
and a ``worker`` made by compose, the worker asking ``http://web:8080/`` every 50 ms by the app's alias;
``web`` is the compose file's own service for ``compose``, and the agent's container on the project's
network (``CD_NETWORKS=PROJECT_default:web``) for ``swap`` and ``blue-green`` (where ``web`` is the
proxy's alias on that network, so the worker goes through the switch). Releases 1.0.0 and 1.1.0
whose HEALTHCHECK asks the database. Two clients hit web's published port every 20 ms
(``tests/support/switch_probe.py``: a new connection per request; keep-alive) during the upgrade to
1.1.0. Prints, per strategy, the failed requests and the longest gap between two good answers of each
client, the worker's failed requests, and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

from tests.support.cd_apps import AppReleases, CdWorld
from tests.support.compose_stack import Stack, build_db_image
from tests.support.docker_env import DockerJanitor, unique
from tests.support.polling import wait_for
from tests.support.proxy_world import proxy_image
from tests.support.registry_server import RegistryServer, start_registry
from tests.support.switch_probe import SwitchProbe

CLIENTS = ("fresh", "keepalive")
STRATEGIES = ("swap", "blue-green", "compose")


def upgrade_once(
    strategy: str, client: Any, janitor: DockerJanitor, root: Path, registry: RegistryServer, db_image: str
) -> dict[str, Any]:
    world = CdWorld(client, janitor, AppReleases(client, registry, janitor), root)
    folder = root / "stack"
    folder.mkdir(parents=True)
    stack = Stack(world, folder, db_image=db_image)
    try:
        for version in ("1.0.0", "1.1.0"):
            world.releases.push(version, "stack")
        if strategy == "compose":
            world.overrides.update(stack.settings())
            stack.write("1.0.0", web_extra=stack.worker_service())
            stack.up()
        elif strategy == "blue-green":
            stack.blue_green_beside(proxy_image())
        else:
            world.janitor.networks.add(stack.network)
            world.overrides.update(CD_NETWORKS=f"{stack.network}:web", CD_VOLUMES="")
            stack.write_beside()
            stack.up()
        deployer = world.deployer()
        if strategy != "compose":
            assert deployer.deploy("1.0.0").outcome == "deployed"
        wait_for(lambda: world.served() == "1.0.0", timeout=60, what="web serving 1.0.0")
        wait_for(lambda: "1.0.0" in stack.worker_saw(), timeout=30, what="the worker reaching web")
        with SwitchProbe(world.url, expected={"1.0.0", "1.1.0"}) as probe:
            seen_before = len(stack.worker_saw())
            started = time.monotonic()
            report = deployer.deploy("1.1.0")
            took = time.monotonic() - started
            probe.wait_for_body("1.1.0")
            probe.wait_for_more(10)
        assert report.outcome == "deployed", report
        worker = stack.worker_saw()[seen_before:]
        row: dict[str, Any] = {
            client_name: (len([s for s in probe.of(client_name) if not s.ok]), probe.max_gap(client_name))
            for client_name in CLIENTS
        }
        row.update(worker=(worker.count("-"), len(worker)), took=took, load=os.getloadavg()[0])
        return row
    finally:
        world.close()
        if stack.file.exists():
            stack.compose("down", "-v", "-t", "1")
        janitor.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--strategy", choices=[*STRATEGIES, "all"], default="all")
    args = parser.parse_args(argv)
    strategies = list(STRATEGIES) if args.strategy == "all" else [args.strategy]

    client = docker.from_env(version="auto")
    janitor = DockerJanitor(client)
    db_image = f"{unique('picicd-db')}:1"  # removed at the end, not by each strategy's cleanup
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="stack-upgrade-") as scratch:
        root = Path(scratch)
        registry = start_registry(root / "registry")
        try:
            build_db_image(client, db_image)
            for strategy in strategies:
                results[strategy] = [
                    upgrade_once(strategy, client, janitor, root / f"{strategy}-{number}", registry, db_image)
                    for number in range(args.rounds)
                ]
        finally:
            registry.stop()
            janitor.images.add(db_image)
            janitor.cleanup()
            client.close()
    print(f"upgrade of web 1.0.0 -> 1.1.0 in a db + worker + web stack; {args.rounds} round(s); two probes every"
          " 20 ms (new connection; keep-alive); the worker asks web by its alias every 50 ms")
    print(f"{'strategy':<11} {'failed (fresh/keep-alive)':>26} {'longest gap (fresh/keep-alive)':>31}"
          f" {'worker failed':>14} {'deploy':>8} {'load (1 min)':>13}")
    for strategy, rows in results.items():
        failed = "/".join(str(max(row[c][0] for row in rows)) for c in CLIENTS)
        gaps = "/".join(f"{max(row[c][1] for row in rows):.2f}s" for c in CLIENTS)
        worker = f"{max(row['worker'][0] for row in rows)}/{max(row['worker'][1] for row in rows)}"
        took = max(row["took"] for row in rows)
        loads = [row["load"] for row in rows]
        print(f"{strategy:<11} {failed:>26} {gaps:>31} {worker:>14} {took:>7.1f}s"
              f" {min(loads):>6.1f}-{max(loads):.1f}")
    print("(the worst round of each; worker failed: its requests without an answer / all it made during the"
          " upgrade; a gap of ~0.02-0.1 s is the probe's own interval plus this machine's load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
