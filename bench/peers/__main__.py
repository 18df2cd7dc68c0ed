"""pi-cicd side by side with the tools a user would otherwise pick, measured in one run.

    python -m bench.peers                 # everything, ~10 minutes on a busy 2-core machine
    python -m bench.peers --rounds 5      # more upgrades and pipeline runs per row
    python -m bench.peers --only ci       # idle, ci, cd or roundtrip (repeatable)

The peers are installed where users get them: ouroboros-cli 1.4.2 from PyPI into
``.bench-peers/ouroboros-venv`` (with the one pin it needs to start, see ``install.py``), and
Debian's ``webhook`` (adnanh/webhook) with ``apt-get``. Needs root (for apt-get, once), dockerd,
Debian's ``docker-registry`` (a throw-away one is started on a loopback port) and busybox-static; the
blue-green row needs the local Caddy image (``scripts/proxy-image``, built once).

Both tools of a row work on the same images, registry, payloads and prober, and their rounds
alternate (who goes first changes every round). The table shows medians (range in brackets), the
ratio pi-cicd / peer (below 1: pi-cicd is better, for every row), and the 1-minute load average
during the row: this machine may be shared, so read the numbers beside it. Everything the run creates
has a unique name and is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from bench.peers import ci, install, roundtrip
from bench.peers.cd import Side, cleanup, measure_upgrades, start_ouroboros, start_ours
from bench.peers.idle import Idle, idle_rows, measure_idle
from bench.peers.procs import remove_registry_images, remove_repository_images
from bench.peers.table import Row, load_now, render
from tests.support.docker_env import DockerJanitor, unique
from tests.support.git_repos import make_git_project
from tests.support.proxy_world import proxy_image
from tests.support.registry_server import RegistryServer, start_registry

REPO = Path(__file__).resolve().parents[2]
PARTS = ("idle", "ci", "cd", "roundtrip")
OUROBOROS_POLL = 30
"""ouroboros raises any shorter ``--interval`` to 30 s."""


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S} load {load_now():.1f}] {text}", file=sys.stderr, flush=True)


def idle_part(client: Any, janitor: DockerJanitor, registry: RegistryServer, root: Path, ouroboros: Path,
              webhook: str, args: argparse.Namespace) -> list[Row]:
    sides: list[Side] = []
    project = make_git_project(_mkdir(root / "git"))
    project.commit_sample()
    image = f"{registry.host}/{unique('peers-ci')}/app"
    agent, hook = None, None
    try:
        sides.append(start_ours("pi-cicd", client, registry, janitor, root / "cd", "trap", 30, deploy_first=True))
        sides.append(start_ouroboros(client, ouroboros, registry, janitor, root / "ouroboros", "trap", 30))
        agent = ci.start_agent(root / "ci", project, image)
        hook = ci.pipeline_webhook(webhook, root / "webhook", project, f"{image}-shell")
        say(f"idle: all four started; {args.settle:g} s to settle, then {args.idle_seconds:g} s measured")
        time.sleep(args.settle)
        assert agent.process.process is not None
        cd_ours, cd_peer = Idle("cd-agent", _pid(sides[0])), Idle("ouroboros", _pid(sides[1]))
        ci_ours, ci_peer = Idle("ci-agent", agent.process.process.pid), Idle("webhook", hook.daemon.pid)
        loads = measure_idle([cd_ours, cd_peer, ci_ours, ci_peer], args.idle_seconds)
        return idle_rows(cd_ours, cd_peer, ci_ours, ci_peer, loads)
    finally:
        if agent is not None:
            agent.process.stop()
        if hook is not None:
            hook.daemon.stop()
        cleanup(client, janitor, sides)


def ci_part(client: Any, registry: RegistryServer, root: Path, webhook: str, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    images = [f"{registry.host}/{unique('peers-ci')}/app" for _ in range(2)]
    project = make_git_project(_mkdir(root / "git"))
    project.commit_sample()
    try:
        ack = Row(f"ack p99, a signed push that queues a run ({args.ack_rounds} rounds × {args.ack_requests}, "
                  "keep-alive, `bench.ack_latency`)", "ms", "webhook")
        say("ack latency")
        ci.measure_ack(ack, args.ack_rounds, args.ack_requests)
        rows.append(ack)

        pipeline = {
            "total": Row("one pipeline run through a webhook delivery (trivial app: fetch, test, build, push)", "s",
                         "webhook + shell"),
            **{step: Row(f"of which `{step}`", "s", "shell") for step in ci.STEPS},
        }
        agent = ci.start_agent(root / "pipeline-ours", project, images[0])
        hook = ci.pipeline_webhook(webhook, root / "pipeline-webhook", project, images[1])
        try:
            say("pipeline runs")
            ci.measure_pipeline(pipeline, agent, hook, root / "pipeline-webhook", project, args.rounds)
        finally:
            agent.process.stop()
            hook.daemon.stop()
        rows += pipeline.values()
    finally:
        remove_repository_images(client, *images)
    return rows


def cd_part(client: Any, janitor: DockerJanitor, registry: RegistryServer, root: Path, ouroboros: Path,
            args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    sides: list[Side] = []
    poll = args.poll
    try:
        caddy = proxy_image()
        say("upgrade outage: swap, blue-green, ouroboros")
        swap = start_ours("pi-cicd swap", client, registry, janitor, root / "swap", "trap", poll)
        sides.append(swap)
        green = start_ours("pi-cicd blue-green", client, registry, janitor, root / "bg", "trap", poll,
                           CD_STRATEGY="blue-green", CD_PROXY_IMAGE=caddy, CD_PROXY_GRACE="1")
        sides.append(green)
        peer = start_ouroboros(client, ouroboros, registry, janitor, root / "ob", "trap", OUROBOROS_POLL)
        sides.append(peer)
        outage_swap = Row("upgrade outage, longest gap between good answers (two 20 ms probes): swap", "s",
                          "ouroboros")
        outage_green = Row("upgrade outage, the same probes: blue-green", "s", "ouroboros")
        measure_upgrades([(outage_swap, swap), (outage_green, green)], peer, [outage_swap, outage_green],
                         args.rounds, lambda result: result.gap)
        rows += [outage_swap, outage_green]
        cleanup(client, janitor, sides)
        sides.clear()

        say("push → served, an app whose PID 1 ignores SIGTERM")
        plain = start_ours("pi-cicd", client, registry, janitor, root / "pid1", "pid1", poll)
        sides.append(plain)
        init = start_ours("pi-cicd CD_INIT", client, registry, janitor, root / "pid1-init", "pid1", poll,
                          CD_INIT="true")
        sides.append(init)
        peer = start_ouroboros(client, ouroboros, registry, janitor, root / "pid1-ob", "pid1", OUROBOROS_POLL)
        sides.append(peer)
        served_plain = Row("release pulled → served, app whose PID 1 ignores SIGTERM (10 s stop timeout)",
                           "s", "ouroboros")
        served_init = Row("the same with `CD_INIT=true`", "s", "ouroboros")
        measure_upgrades([(served_plain, plain), (served_init, init)], peer, [served_plain, served_init],
                         args.rounds, lambda result: result.served_after_pull)
        rows += [served_plain, served_init]
    finally:
        cleanup(client, janitor, sides)
    return rows


def _pid(side: Side) -> int:
    process = side.agent.process
    assert process is not None
    return int(process.pid)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="upgrades per CD row and pipeline runs per CI row")
    parser.add_argument("--ack-rounds", type=int, default=5)
    parser.add_argument("--ack-requests", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=45.0, help="the idle measuring window")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds idle agents get to finish starting")
    parser.add_argument("--poll", type=float, default=1.0,
                        help="cd-agent's poll interval in the CD rows (ouroboros polls every 30 s, its minimum)")
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts (repeatable)")
    parser.add_argument("--peers-dir", type=Path, default=REPO / ".bench-peers",
                        help="where ouroboros's virtual environment is kept")
    args = parser.parse_args(argv)
    parts = args.only or list(PARTS)

    began = time.monotonic()
    client = docker.from_env(version="auto")
    client.ping()
    say("installing the peers (ouroboros from PyPI, webhook from Debian) when missing")
    ouroboros = install.ouroboros(args.peers_dir / "ouroboros-venv")
    webhook = install.webhook()
    versions = (f"{install.version_of([str(ouroboros), '--version'])} ({install.OUROBOROS}, {install.OUROBOROS_PIN}); "
                f"{install.version_of([webhook, '-version'])}; dockerd {client.version().get('Version', '?')}")
    rows: list[Row] = []
    failed: list[str] = []
    janitor = DockerJanitor(client)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as scratch:
        root = Path(scratch)
        registry = start_registry(root / "registry")
        try:
            runs = {
                "idle": lambda: idle_part(client, janitor, registry, root / "idle", ouroboros, webhook, args),
                "ci": lambda: ci_part(client, registry, root / "ci", webhook, args),
                "cd": lambda: cd_part(client, janitor, registry, root / "cd", ouroboros, args),
                # its own registry: one that notifies the CD agent of every push (bench/peers/roundtrip.py)
                "roundtrip": lambda: roundtrip.measure(client, janitor, root / "roundtrip", webhook, ouroboros,
                                                       args.rounds, say),
            }
            for part in parts:
                try:
                    rows += runs[part]()
                except Exception as exc:
                    # A shared machine can break one part (a container removed under it, a timeout under
                    # load): the other parts' rows are still worth printing.
                    failed.append(f"{part}: {type(exc).__name__}: {str(exc)[:3000]}")
                    say(f"the {part} part failed: {exc}")
        finally:
            janitor.cleanup()
            remove_registry_images(client, registry.host)
            registry.stop()
            client.close()
    minutes = (time.monotonic() - began) / 60
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {_cores()} cores, "
          f"{minutes:.1f} min; {versions}")
    print()
    print(render(rows))
    print()
    print("ratio = pi-cicd / peer (below 1: pi-cicd uses less or is faster); load = 1-minute load average "
          "during the row (min–max)")
    for failure in failed:
        print(f"FAILED {failure}")
    return 1 if failed else 0


def _cores() -> int:
    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
