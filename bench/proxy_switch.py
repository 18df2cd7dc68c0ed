"""Does switching the blue-green proxy's upstream drop or stall requests? Two probes say.

    python -m bench.proxy_switch [--switches 20] [--interval 0.02] [--image REF]

Needs dockerd. Starts a Caddy proxy (``scripts/proxy-image`` unless ``--image``) and two busybox app
containers on a private network, then switches the proxy between them N times while two clients GET
the published loopback port every ``--interval`` seconds: one opening a new connection per request,
one keeping its connection alive. Prints the failed requests, the longest gap between two good
answers per client, and how long a switch (``docker cp`` + ``docker exec caddy reload``) takes.
Everything it created is removed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker

from tests.support.docker_env import DockerJanitor
from tests.support.proxy_world import ProxyWorld, build_app_image, proxy_image
from tests.support.switch_probe import SwitchProbe


def gaps(probe: SwitchProbe, client: str, switches: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Gaps between consecutive good answers, split into those overlapping a switch and the rest
    (the rest is what the loaded machine alone causes: the yardstick)."""
    good = [sample.at for sample in probe.of(client) if sample.ok]
    during: list[float] = []
    outside: list[float] = []
    for earlier, later in zip(good, good[1:], strict=False):
        overlaps = any(earlier < end and start < later for start, end in switches)
        (during if overlaps else outside).append(later - earlier)
    return during, outside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between a client's requests")
    parser.add_argument("--image", help="the proxy image (default: the one scripts/proxy-image builds)")
    parser.add_argument(
        "--keepalive", action="store_true", help="let the proxy keep client connections alive (shows the race)"
    )
    args = parser.parse_args(argv)

    client = docker.from_env(version="auto")
    janitor = DockerJanitor(client)
    app_image = build_app_image(client)
    janitor.images.add(app_image)
    with tempfile.TemporaryDirectory(prefix="proxy-switch-") as scratch:
        world = ProxyWorld(client, janitor, args.image or proxy_image(), app_image, Path(scratch))
        try:
            controller = world.controller(keepalive=args.keepalive)
            controller.ensure()
            a = world.start_app(controller, "A")
            b = world.start_app(controller, "B")
            controller.switch(a)
            world.wait_serving("A")
            switches: list[tuple[float, float]] = []
            with SwitchProbe(world.url, expected={"A", "B"}, interval=args.interval) as probe:
                for number in range(args.switches):
                    target, body = (b, "B") if number % 2 == 0 else (a, "A")
                    started = time.monotonic()
                    controller.switch(target)
                    switches.append((started, time.monotonic()))
                    probe.wait_for_body(body)
                    probe.wait_for_more(3)
        finally:
            world.cleanup()
            client.close()

    print(
        f"{args.switches} switches, probe interval {args.interval * 1000:.0f} ms, proxy {world.proxy_image}, "
        f"client keep-alive {'on' if args.keepalive else 'off (Connection: close)'}"
    )
    for name in ("fresh", "keepalive"):
        samples = probe.of(name)
        failed = [sample for sample in samples if not sample.ok]
        print(
            f"  {name:<10} {len(samples):5d} requests, {len(failed)} failed, "
            f"switches seen {len(probe.bodies(name)) - 1}"
        )
        during, outside = gaps(probe, name, switches)
        print(
            f"  {'':<10} longest gap between good answers: {max(during, default=0) * 1000:.0f} ms across a switch, "
            f"{max(outside, default=0) * 1000:.0f} ms elsewhere (median {statistics.median(outside) * 1000:.0f} ms)"
        )
        for sample in failed[:5]:
            print(f"    failed: {sample.detail}")
    durations = [end - start for start, end in switches]
    print(
        f"  switch     median {statistics.median(durations) * 1000:.0f} ms, "
        f"max {max(durations) * 1000:.0f} ms (docker cp + docker exec caddy reload)"
    )
    return 1 if probe.failures else 0


if __name__ == "__main__":
    sys.exit(main())
