"""Multi-platform releases and builds on another engine (issue 22): what they cost.

    python -m bench.platforms              # 3 rounds of each variant, alternating
    python -m bench.platforms --rounds 5
    python -m bench.platforms --variants amd64+arm64,"amd64+arm64 buildx"

The app is the tests' multi-platform busybox sample (tests/support/platform_apps.py: ``FROM scratch``,
a busybox per architecture, a ``test`` stage), in a local bare git repository, released to a local
``docker-registry`` by the real pipeline (``ci_agent.pipeline.Pipeline``, in this process). Each run gets
a commit of its own (a new page), so every run builds its last layers. Variants:

* **amd64** — ``CI_PLATFORMS=linux/amd64``, tests on linux/amd64 (the engine's own platform);
* **amd64+arm64** — ``CI_PLATFORMS=linux/amd64,linux/arm64``, tests on both (arm64 under QEMU);
* **amd64+arm64 buildx** — the same two-platform release with ``CI_BUILDER=buildx`` (``docker buildx``'s docker
  driver: the engine's BuildKit, one platform per build; ``scripts/buildx`` installs the plugin); the others use
  the classic builder (``CI_BUILDER=classic``);
* **local engine** / **second engine** — a single-platform release built on the local dockerd, or with
  ``CI_BUILD_DOCKER_HOST`` on a second dockerd started by this script (own socket and data root).

Numbers: wall seconds of the run; **machine CPU** (user + system of every process on the machine, from
``/proc/stat``: dockerd, containerd, QEMU and the build's own processes are where a build spends its CPU);
**engine CPU** (both dockerds' and containerds' own CPU, plus every container's from cgroup v1 ``cpuacct``
of ``/docker``); **client CPU** (this process and the children it waited for: the agent's own share).
The emulation factor of the test step is the run log's ``test for linux/arm64 took ... (emulated: N.Nx
...)``. Both engines run on this machine, so for the second engine only the client side is the "local
machine's" share: the engine's work shows in the machine CPU whichever engine does it. The machine is shared: every row
carries the 1-minute load average, and machine CPU includes whatever else ran meanwhile.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ci_agent.builder import DockerGateway
from tests.support.build_hosts import start_engine, stop_engine
from tests.support.git_repos import make_git_project
from tests.support.platform_apps import PlatformAgent, commit_multi_sample, make_platform_agent
from tests.support.registry_server import start_registry

_FACTOR = re.compile(r"test for linux/arm64 took [\d.]+s \(emulated: ([\d.]+)x")
_STEP = re.compile(r"step (\w+) finished in ([\d.]+)s")


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu(pidfile: Path) -> float:
    """User + system CPU seconds of the process named by ``pidfile`` (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pidfile.read_text().strip()}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_cpu(pidfiles: list[Path]) -> float:
    """CPU seconds of the Docker engines: each dockerd and its containerd (``pidfiles``), plus every
    container's processes (cgroup v1 ``cpuacct`` of ``/docker``, which keeps the charges of removed
    containers). Other sessions' containers on this machine are in it too."""
    total = sum(process_cpu(pidfile) for pidfile in pidfiles)
    try:
        total += int(Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage").read_text()) / 1e9
    except OSError:
        pass
    return total


def client_cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Sample:
    wall: float
    machine: float
    engine: float
    client: float
    load: float
    steps: dict[str, float]
    factor: float | None


def measure(release: Callable[[], str], engines: list[Path]) -> Sample:
    machine, engine, client, began = machine_cpu(), engine_cpu(engines), client_cpu(), time.monotonic()
    log = release()
    wall = time.monotonic() - began
    match = _FACTOR.search(log)
    return Sample(
        wall, machine_cpu() - machine, engine_cpu(engines) - engine, client_cpu() - client, os.getloadavg()[0],
        {step: float(seconds) for step, seconds in _STEP.findall(log)}, float(match[1]) if match else None,
    )


def summary(name: str, samples: list[Sample]) -> str:
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    factors = [item.factor for item in samples if item.factor is not None]
    steps = " ".join(
        f"{step} {median([item.steps.get(step, 0.0) for item in samples]):.1f}s"
        for step in ("test", "build", "push")
    )
    text = (
        f"{name:<19} wall {median([s.wall for s in samples]):6.1f}s"
        f"  machine CPU {median([s.machine for s in samples]):6.1f}s"
        f"  engine CPU {median([s.engine for s in samples]):5.1f}s"
        f"  client CPU {median([s.client for s in samples]):5.2f}s"
        f"  ({steps}; load {median([s.load for s in samples]):.1f})"
    )
    if factors:
        text += f"  test-step emulation factor {median(factors):.1f}x"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="", help="comma-separated names of the variants to run (default: all)")
    arguments = parser.parse_args()
    rounds = arguments.rounds
    wanted = [name.strip() for name in arguments.variants.split(",") if name.strip()]
    with tempfile.TemporaryDirectory(prefix="picicd-bench-platforms-") as folder:
        root = Path(folder)
        registry = start_registry(root / "registry")
        engine = start_engine(Path(tempfile.mkdtemp(prefix="picicd-e2-", dir="/tmp")))
        try:
            project = make_git_project(root)
            commit_multi_sample(project)
            variants = {
                "amd64": ({"ci_platforms": "linux/amd64"}, None),
                "amd64+arm64": ({"ci_platforms": "linux/amd64,linux/arm64",
                                 "ci_test_platforms": "linux/amd64,linux/arm64"}, None),
                "amd64+arm64 buildx": ({"ci_platforms": "linux/amd64,linux/arm64", "ci_builder": "buildx",
                                        "ci_test_platforms": "linux/amd64,linux/arm64"}, None),
                # One image, as without CI_PLATFORMS (the sample's Dockerfile picks its busybox by TARGETARCH).
                "local engine": ({"ci_build_args": "TARGETARCH=amd64"}, None),
                "second engine": ({"ci_build_args": "TARGETARCH=amd64", "ci_build_docker_host": engine.host},
                                  engine.host),
            }
            unknown = [name for name in wanted if name not in variants]
            if unknown:
                raise SystemExit(f"--variants: no variant {', '.join(unknown)} (there are: {', '.join(variants)})")
            variants = {name: value for name, value in variants.items() if not wanted or name in wanted}
            agents = {}
            for name, (settings, host) in variants.items():
                image = f"{registry.host}/bench-{uuid.uuid4().hex[:8]}/app"
                agents[name] = make_platform_agent(
                    root / name.replace(" ", "-"), image, project.url, DockerGateway(build_host=host), **settings
                )
            samples: dict[str, list[Sample]] = {name: [] for name in variants}
            for round_number in range(rounds):
                order = list(variants)[round_number % len(variants):] + list(variants)[:round_number % len(variants)]
                for name in order:
                    sha = project.commit({"www/index.html": f"<p>hello {uuid.uuid4().hex}</p>\n"}, "fix: a new page")
                    project.push()
                    agent = agents[name]

                    def release(agent: PlatformAgent = agent, sha: str = sha) -> str:
                        run = agent.run(sha)
                        if run.status != "succeeded":
                            raise SystemExit(f"{agent.settings.ci_image}: run {run.number} {run.status}: {run.error}")
                        return agent.log(run)

                    pidfiles = [Path("/var/run/docker.pid"), Path("/var/run/docker/containerd/containerd.pid"),
                                engine.root / "docker.pid", engine.root / "exec" / "containerd" / "containerd.pid"]
                    samples[name].append(measure(release, pidfiles))
                    print(f"round {round_number + 1} {name}: {samples[name][-1].wall:.1f}s", flush=True)
            print()
            for name in variants:
                print(summary(name, samples[name]))
            if "local engine" in samples and "second engine" in samples:
                local, remote = samples["local engine"], samples["second engine"]
                remote_client = statistics.median([s.client for s in remote])
                local_total = statistics.median([s.client + s.engine for s in local])
                print(f"\nclient CPU of a build on the second engine / client + engine CPU of a local build: "
                      f"{remote_client:.2f}s / {local_total:.2f}s = {remote_client / local_total:.1%}")
            for agent in agents.values():
                for reference in agent.local_references():
                    agent.pipeline.docker.remove_image(reference)
                agent.pipeline.docker.close()
                agent.close()
        finally:
            stop_engine(engine)
            shutil.rmtree(engine.root, ignore_errors=True)
            registry.stop()


if __name__ == "__main__":
    main()
