"""How long is the app unreachable while cd-agent swaps it? An HTTP probe every 50 ms says.

    python -m bench.swap_downtime [--rounds 3] [--health url|running|healthcheck]

Needs dockerd and Debian's docker-registry (a throwaway registry is started on a loopback port).
For each round: upgrade, manual rollback, and a failed deploy (a release whose process exits, rolled
back automatically); prints the longest outage the probe saw for each, and the deploy's own
``downtime_s`` (stop of the old container to verdict, an upper bound).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker

from cd_agent.report import DeployReport
from tests.support.cd_apps import AppReleases, CdWorld, HttpProbe, Variant
from tests.support.docker_env import DockerJanitor
from tests.support.registry_server import start_registry

VERBOSE = False


def measure(world: CdWorld, action: Callable[[], DeployReport], expect: str) -> tuple[float, float | None]:
    with HttpProbe(world.url, interval=0.05) as probe:
        report = action()
        probe.wait_serving(expect)
    if VERBOSE:
        print([(round(m - probe.samples[0][0], 2), ok, t) for m, ok, t in probe.samples], report.outcome)
    return probe.longest_outage, report.downtime_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--health", choices=["url", "running", "healthcheck"], default="url")
    parser.add_argument("--verbose", action="store_true", help="print every probe sample")
    args = parser.parse_args(argv)
    global VERBOSE
    VERBOSE = args.verbose

    client = docker.from_env(version="auto")
    janitor = DockerJanitor(client)
    with tempfile.TemporaryDirectory(prefix="swap-downtime-") as scratch:
        root = Path(scratch)
        registry = start_registry(root / "registry")
        world = CdWorld(client, janitor, AppReleases(client, registry, janitor), root / "cd")
        try:
            variant: Variant = "healthcheck" if args.health == "healthcheck" else "good"
            world.releases.push("1.0.0", variant)
            world.releases.push("1.1.0", variant)
            world.releases.push("1.2.0", "broken")
            overrides = {"CD_HEALTH_URL": world.url} if args.health == "url" else {}
            deployer = world.deployer(CD_HEALTH_GRACE="1", **overrides)
            deployer.deploy("1.0.0")
            results: dict[str, list[tuple[float, float | None]]] = {"upgrade": [], "rollback": [], "failed deploy": []}
            for _ in range(args.rounds):
                results["upgrade"].append(measure(world, lambda: deployer.deploy("1.1.0", force=True), "1.1.0"))
                results["rollback"].append(measure(world, deployer.rollback, "1.0.0"))
                results["failed deploy"].append(
                    measure(world, lambda: deployer.deploy("1.2.0", force=True), "1.0.0")
                )
            print(f"health check: {args.health}; {args.rounds} rounds; probe every 50 ms")
            print(f"{'swap':<14} {'outage max':>10} {'outage median':>14} {'downtime_s median':>18}")
            for name, samples in results.items():
                outages = [outage for outage, _ in samples]
                reported = [d for _, d in samples if d is not None]
                print(
                    f"{name:<14} {max(outages):>9.2f}s {statistics.median(outages):>13.2f}s "
                    f"{statistics.median(reported) if reported else float('nan'):>17.2f}s"
                )
        finally:
            world.close()
            janitor.cleanup()
            registry.stop()
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
