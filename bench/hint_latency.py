"""Push → served: pi-cicd with the registry's push notification vs pi-cicd polling every 30 s.

    python -m bench.hint_latency                 # 3 releases each way
    python -m bench.hint_latency --releases 10 --only hint --compare /tmp/main   # this code vs main's

One throw-away ``docker-registry`` whose config notifies the agent (``notifications.endpoints``, as a user
writes it), one trivial app (busybox ``httpd``, the version in its page), ``CD_STRATEGY=swap``. For each
release the clock starts when ``docker push`` returns (the registry has the tag) and stops at the first
answer of the new version. "hint": ``CD_HOOK_TOKEN`` set, ``CD_POLL_INTERVAL=30`` (never reached);
"poll 30 s": no hook, the same interval: the wait for the next poll is what the hint saves. Releases are
pushed at a random moment of the poll cycle (hint: 1–3 s after the last one was served); each way has its
own registry and app, and their releases alternate (who goes first too), so a change of the machine's
load hits them alike. ``--compare DIR`` adds a hint agent running another checkout's code (``PYTHONPATH``).
The CI run itself is not part of these numbers: ``python -m bench.peers --only roundtrip`` measures the
whole round trip, beside Debian's ``webhook`` + shell + ouroboros.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from bench.peers.cd import Side, _serves, start_ours
from bench.peers.procs import remove_registry_images
from tests.support.docker_env import DockerJanitor
from tests.support.ports import free_port
from tests.support.registry_hints import HOOK_TOKEN, notifications_yaml
from tests.support.registry_server import RegistryServer, start_registry

POLL = 30.0
PROBE_TIMEOUT = 0.2


@dataclass
class Measured:
    """One agent under test: its own registry (notifying it or not), its app and the times seen."""

    label: str
    hint: bool
    side: Side
    registry: RegistryServer
    times: list[float] = field(default_factory=list)

    def release(self, version: str) -> None:
        # a push lands anywhere in the poll cycle; with the hint only a short, varying pause between releases
        time.sleep(random.uniform(1, 3) if self.hint else random.uniform(0, POLL))
        pushed = self.side.releases.push(version, move_latest=False)
        deadline = time.monotonic() + 3 * POLL + 60
        # A short timeout: a request caught by the swap (sent to the old container as it stops) hangs
        # until it, and with 1 s the first answer of the new version was seen up to ~0.9 s late.
        while not _serves(self.side.url, version, timeout=PROBE_TIMEOUT):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: {version} not served in time")
            time.sleep(0.02)
        self.times.append(time.time() - pushed)
        print(f"  {self.label:16} {version}: served {self.times[-1]:5.2f} s after the push "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)


def start(label: str, root: Path, client: Any, janitor: DockerJanitor, *, hint: bool,
          code: Path | None = None) -> Measured:
    port = free_port()
    notify = notifications_yaml(f"http://127.0.0.1:{port}/hooks/registry/{HOOK_TOKEN}") if hint else ""
    registry = start_registry(root / "registry", notify)
    extra = {"CD_DASHBOARD_PORT": str(port)}
    if code is not None:
        extra["PYTHONPATH"] = str(code.resolve())  # the agent (and its deploy processes) run that checkout
    if hint:
        extra["CD_HOOK_TOKEN"] = HOOK_TOKEN
    try:
        side = start_ours(label, client, registry, janitor, root / "agent", "trap", POLL, deploy_first=True, **extra)
    except BaseException:
        registry.stop()
        raise
    return Measured(label, hint, side, registry)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", type=int, default=3)
    parser.add_argument("--only", choices=("hint", "poll"), help="measure one way only")
    parser.add_argument("--compare", type=Path, action="append", default=[], metavar="DIR",
                        help="also a hint agent running the code in DIR (a `git archive` of another commit), its "
                             "releases alternating with the others' (repeatable)")
    args = parser.parse_args()
    ways: list[tuple[str, bool, Path | None]] = []
    if args.only != "poll":
        ways += [("hint", True, None)] + [(f"hint {code.name}", True, code) for code in args.compare]
    if args.only != "hint":
        ways.append(("poll 30 s", False, None))
    client = docker.from_env(version="auto")
    janitor = DockerJanitor(client)
    sides: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="hint-latency-") as scratch:
        try:
            for index, (label, hint, code) in enumerate(ways):
                sides.append(start(label, Path(scratch) / str(index), client, janitor, hint=hint, code=code))
            for number in range(1, args.releases + 1):
                for measured in sides if number % 2 else sides[::-1]:  # who goes first alternates
                    measured.release(f"1.0.{number}")
        finally:
            for measured in sides:
                measured.side.stop()
                measured.registry.stop()
            janitor.cleanup()
            for measured in sides:  # the releases the agents deployed (their containers are gone)
                remove_registry_images(client, measured.registry.host)
    print("push → served (s)   median    min    max")
    for measured in sides:
        times = measured.times
        print(f"  {measured.label:16} {statistics.median(times):7.2f} {min(times):6.2f} {max(times):6.2f}   "
              f"({len(times)} releases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
