"""Push → served: pi-cicd with the registry's push notification vs pi-cicd polling every 30 s.

    python -m bench.hint_latency                 # 3 releases each way
    python -m bench.hint_latency --releases 5

One throw-away ``docker-registry`` whose config notifies the agent (``notifications.endpoints``, as a user
writes it), one trivial app (busybox ``httpd``, the version in its page), ``CD_STRATEGY=swap``. For each
release the clock starts when ``docker push`` returns (the registry has the tag) and stops at the first
answer of the new version. "hint": ``CD_HOOK_TOKEN`` set, ``CD_POLL_INTERVAL=30`` (never reached);
"poll 30 s": no hook, the same interval: the wait for the next poll is what the hint saves. Releases are
pushed at a random moment of the poll cycle. The CI run itself is not part of these numbers (``bench.peers``
measures a whole round trip); the peers' ``webhook`` + ouroboros row is not measured here.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import docker

from bench.peers.cd import _serves, start_ours
from tests.support.docker_env import DockerJanitor
from tests.support.ports import free_port
from tests.support.registry_hints import HOOK_TOKEN, notifications_yaml
from tests.support.registry_server import start_registry

POLL = 30.0
PROBE_TIMEOUT = 0.2


def measure(label: str, root: Path, releases: int, *, hint: bool, code: Path | None = None) -> list[float]:
    client = docker.from_env(version="auto")
    janitor = DockerJanitor(client)
    port = free_port()
    notify = notifications_yaml(f"http://127.0.0.1:{port}/hooks/registry/{HOOK_TOKEN}") if hint else ""
    registry = start_registry(root / "registry", notify)
    extra = {"CD_DASHBOARD_PORT": str(port)}
    if code is not None:
        extra["PYTHONPATH"] = str(code.resolve())  # the agents run that checkout's cd_agent
    if hint:
        extra["CD_HOOK_TOKEN"] = HOOK_TOKEN
    side = None
    times = []
    try:
        side = start_ours(label, client, registry, janitor, root / "agent", "trap", POLL, deploy_first=True, **extra)
        for number in range(1, releases + 1):
            time.sleep(random.uniform(0, POLL))  # a push lands anywhere in the poll cycle
            version = f"1.0.{number}"
            pushed = side.releases.push(version, move_latest=False)
            deadline = time.monotonic() + 3 * POLL + 60
            # A short timeout: a request caught by the swap (sent to the old container as it stops) hangs
            # until it, and with 1 s the first answer of the new version was seen up to ~0.9 s late.
            while not _serves(side.url, version, timeout=PROBE_TIMEOUT):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: {version} not served in time")
                time.sleep(0.02)
            times.append(time.time() - pushed)
            print(f"  {label:10} {version}: served {times[-1]:5.2f} s after the push (load {os.getloadavg()[0]:.1f})",
                  flush=True)
    finally:
        if side is not None:
            side.stop()
        registry.stop()
        janitor.cleanup()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", type=int, default=3)
    parser.add_argument("--only", choices=("hint", "poll"), help="measure one side only (while tuning the hint)")
    parser.add_argument("--code", type=Path, help="run the agents from this checkout (`git archive` of another "
                        "branch) instead of the installed one, to compare two versions on the same machine")
    args = parser.parse_args()
    results = {}
    sides = [(label, hint) for label, hint in (("hint", True), ("poll 30 s", False))
             if args.only is None or (args.only == "hint") == hint]
    with tempfile.TemporaryDirectory(prefix="hint-latency-") as scratch:
        for label, hint in sides:
            results[label] = measure(label, Path(scratch) / label.replace(" ", "-"), args.releases, hint=hint,
                                     code=args.code)
    print("push → served (s)   median    min    max")
    for label, times in results.items():
        print(f"  {label:16} {statistics.median(times):7.2f} {min(times):6.2f} {max(times):6.2f}   "
              f"({len(times)} releases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
