"""Push → served, the whole round trip: a signed GitHub delivery to the first answer of the new version.

Three ways to keep one trivial app up to date, side by side in one run:

- **pi-cicd with the hint**: ``ci-agent serve`` runs the pipeline and pushes the release to a
  ``docker-registry`` whose config notifies ``cd-agent watch`` (``notifications.endpoints`` →
  ``/hooks/registry/<CD_HOOK_TOKEN>``), which polls at once and deploys (swap); ``CD_POLL_INTERVAL=30``.
- **pi-cicd polling every 30 s**: the same, with no hook: the release waits for the next poll.
- **Debian's ``webhook`` + shell + ouroboros**: ``webhook`` checks the delivery's HMAC and runs the
  shell pipeline of :mod:`bench.peers.ci` (fetch and check out, test, build, push the version and
  ``latest``); ouroboros, at its fastest poll (30 s, ``--interval`` below that is raised to 30), pulls
  ``latest`` and recreates the container.

One git project and one app (busybox ``httpd`` behind a shell that stops at once on SIGTERM, the
release's text in ``/www/index.html``) for all three, each with its own image repository in the same
registry, its own loopback port and its own commit per round (the page names the round and the way).
The clock starts as the delivery is sent and stops at the first answer of that commit's page (probed
every 20 ms). Rounds alternate between the ways (who goes first too); before each, a pause of 0–30 s
for the two that poll, so a release lands anywhere in their poll cycle, and 1–3 s for the hint.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.peers import ci
from bench.peers.cd import TRAP_START, _serves
from bench.peers.procs import Daemon, remove_registry_images
from bench.peers.table import Row
from cd_agent.proxy import network_name
from tests.support.agent_process import AgentProcess
from tests.support.ci_agent_server import CiAgentProcess, push_payload
from tests.support.docker_env import BUSYBOX, DockerJanitor, unique
from tests.support.git_repos import GitProject, make_git_project
from tests.support.ports import free_port
from tests.support.registry_hints import HOOK_TOKEN, notifications_yaml
from tests.support.registry_server import RegistryServer, start_registry

POLL = 30
PROBE_INTERVAL = 0.02
PROBE_TIMEOUT = 0.2
ROUND_TIMEOUT = 240.0

DOCKERFILE = """\
FROM scratch AS base
LABEL bench.peers.run={run}
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY app/ /app/
COPY www/ /www/

FROM base AS test
COPY tests/ /tests/

FROM base
CMD ["/app/start.sh"]
"""

TEST_SCRIPT = """#!/bin/sh
grep -q release /www/index.html
"""


OLD_PUSH = 'docker push -q "$image:latest" > /dev/null\n'
assert OLD_PUSH in ci.PIPELINE_SCRIPT
# ouroboros recreates a container from its new image's first tag (``0.1.N`` when the build tagged both),
# and from then on follows that tag, never ``latest``: the script keeps only ``latest`` on the engine.
PIPELINE_SCRIPT = ci.PIPELINE_SCRIPT.replace(
    OLD_PUSH, OLD_PUSH + 'docker rmi "$image:0.1.$count" > /dev/null\n'
)


def make_project(root: Path) -> GitProject:
    """The app every way releases: a trap-stopping ``httpd`` with a ``test`` stage, its first commit pushed."""
    project = make_git_project(root)
    # The label makes this run's build cache its own: the first steps are those of every test's busybox
    # app, and a test's cleanup elsewhere on a shared engine removed a cached step mid-build ("unable to
    # find image sha256:...").
    project.commit(
        {"Dockerfile": DOCKERFILE.format(run=unique("run")), "busybox": BUSYBOX.read_bytes(),
         "app/start.sh": TRAP_START, "www/index.html": page(0, "start"), "tests/run.sh": TEST_SCRIPT},
        "feat: the app", executable=("busybox", "app/start.sh", "tests/run.sh"),
    )
    project.push()
    return project


def page(index: int, way: str) -> str:
    return f"<p>release {index} via {way}</p>\n"


def first_release(project: GitProject, slug: str) -> dict[str, Any]:
    """A commit of its own for each way's first release: built from one shared commit, the legacy builder's
    cache gives the three ways the same image ID, and one way's removal of its image (by ID) takes the
    others' tags with it."""
    message = f"fix: the first release via {slug}"
    sha = project.commit({"www/index.html": page(0, slug)}, message)
    project.push()
    return push_payload(project, sha, message)


class PipelineFailed(RuntimeError):
    """A round's pipeline failed (on an engine shared with test runs, a cached build step can be removed
    mid-build): the round is taken again with a new commit."""


ATTEMPTS = 3


@dataclass
class Way:
    """One way from a delivery to a served release: who receives the delivery, who deploys, where it serves."""

    label: str
    slug: str
    pause: tuple[float, float]
    url: str
    send: Any
    """``send(raw, headers)``: delivers a signed push, raising when it is not accepted; returns its run's key."""
    ci_finished: Any
    """``ci_finished(key)``: when that delivery's pipeline ended (epoch seconds)."""
    ci_failed: Any
    """``ci_failed(key)``: True once that delivery's pipeline has failed."""
    stop: Any

    def round(self, project: GitProject, index: int) -> tuple[float, float]:
        """Commit and push a change, deliver it; the seconds until its page is served, and of them those
        after its pipeline ended (the CD side's share)."""
        time.sleep(random.uniform(*self.pause))
        body = page(index, self.slug)
        message = f"fix: release {index} via {self.slug}"
        sha = project.commit({"www/index.html": body}, message)
        project.push()
        raw, headers = ci.signed(push_payload(project, sha, message))
        began = time.time()
        key = self.send(raw, headers)
        deadline = time.monotonic() + ROUND_TIMEOUT
        checked = time.monotonic()
        while not _serves(self.url, body, timeout=PROBE_TIMEOUT):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: release {index} not served {ROUND_TIMEOUT:g} s after the delivery")
            if time.monotonic() - checked > 1:
                checked = time.monotonic()
                if self.ci_failed(key):
                    raise PipelineFailed(f"{self.label}: the pipeline of release {index} failed")
            time.sleep(PROBE_INTERVAL)
        served = time.time()
        return served - began, served - self.ci_finished(key)


def _post(url: str, accepted: int) -> Any:
    """Posts a delivery; returns the run number ci-agent answers, or the delivery id (the shell's key)."""

    def send(raw: bytes, headers: dict[str, str]) -> object:
        response = httpx.post(url, content=raw, headers=headers, timeout=30)
        if response.status_code != accepted:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
        return response.json()["run"] if accepted == 202 else headers["X-GitHub-Delivery"]

    return send


def _cd_environ(image: str, container: str, port: int, root: Path, **extra: str) -> dict[str, str]:
    return {
        "CD_IMAGE": image, "CD_CONTAINER_NAME": container, "CD_PORTS": f"127.0.0.1:{port}:8080",
        "CD_POLL_INTERVAL": str(POLL), "CD_HEALTH_URL": f"http://127.0.0.1:{port}/", "CD_HEALTH_GRACE": "1",
        "CD_STOP_TIMEOUT": "10", "LOG_DIR": str(root / "logs"), "STATE_DIR": str(root / "state"), **extra,
    }


def start_pi_cicd(label: str, slug: str, root: Path, project: GitProject, registry: RegistryServer,
                  janitor: DockerJanitor, *, hook_port: int | None) -> Way:
    """``ci-agent serve`` and ``cd-agent watch`` for one image; with ``hook_port`` the CD agent takes the
    registry's notifications there. Returns once the CD agent serves the first release."""
    image = f"{registry.host}/{unique('roundtrip')}/app"
    agent: CiAgentProcess = ci.start_agent(root / "ci", project, image)
    container, port = unique("picicd-roundtrip"), free_port()
    janitor.name_prefixes.add(container)
    janitor.networks.add(network_name(container))
    extra = {"CD_DASHBOARD_PORT": str(hook_port or free_port())}
    if hook_port is not None:
        extra["CD_HOOK_TOKEN"] = HOOK_TOKEN
    cd_root = root / "cd"
    cd_root.mkdir(parents=True, exist_ok=True)
    watch: AgentProcess | None = None

    def stop() -> None:
        if watch is not None:
            watch.stop()
        agent.process.stop()

    try:
        def finished(run: int) -> float:
            done = agent.wait_finished(run, timeout=ROUND_TIMEOUT)
            return ci.iso_seconds(str(done["finished_at"]))

        def failed(run: int) -> bool:
            return bool(agent.run(run)["status"] == "failed")

        way = Way(label, slug, (1, 3) if hook_port else (0, POLL), f"http://127.0.0.1:{port}/",
                  _post(f"{agent.url}/webhook", 202), finished, failed, stop)
        # The first release (not counted): built by the CI agent, deployed by the watcher as it starts.
        for attempt in range(1, ATTEMPTS + 1):
            raw, headers = ci.signed(first_release(project, slug))
            answer = httpx.post(f"{agent.url}/webhook", content=raw, headers=headers, timeout=30)
            if answer.status_code != 202:
                raise RuntimeError(f"{label}: ci-agent answered {answer.status_code}: {answer.text[:300]}")
            run = agent.wait_finished(answer.json()["run"], timeout=ROUND_TIMEOUT)
            if run["status"] == "succeeded":
                break
            if attempt == ATTEMPTS:
                raise RuntimeError(f"{label}: the first run ended {run['status']}: "
                                   f"{agent.log_of(run['number'])[-2000:]}")
        watch = AgentProcess("cd_agent", ["watch"], _cd_environ(image, container, port, cd_root, **extra),
                             cd_root).start()
        watch.wait_until(lambda: _serves(way.url, page(0, slug)), timeout=120, what=f"{label} serving")
        return way
    except BaseException:
        stop()
        raise


def start_peer(root: Path, project: GitProject, registry: RegistryServer, janitor: DockerJanitor, client: Any,
               webhook: str, ouroboros: Path) -> Way:
    """``webhook`` running the shell pipeline, the app started as an ouroboros user starts it (``docker run``
    of ``latest``), and ouroboros watching that container every 30 s."""
    image = f"{registry.host}/{unique('roundtrip-sh')}/app"
    directory = root / "webhook"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "image").write_text(image)
    (directory / "repo").write_text(project.url)
    hook = ci.Webhook.start(webhook, directory, "pipeline", PIPELINE_SCRIPT)
    daemon: Daemon | None = None

    def stop() -> None:
        if daemon is not None:
            daemon.stop()
        hook.daemon.stop()

    try:
        # The first release (not counted), the way ``run_theirs`` waits for the script's end.
        for attempt in range(1, ATTEMPTS + 1):
            delivery = str(uuid.uuid4())
            raw, headers = ci.signed(first_release(project, "shell"), delivery)
            _post(hook.url, 200)(raw, headers)
            done = directory / f"done-{delivery}"
            hook.daemon.wait_for(lambda path=done: path.exists() and path.read_text().strip(),
                                 timeout=ROUND_TIMEOUT, what="the shell pipeline's first run")
            if done.read_text().strip() != "failed":
                break
            if attempt == ATTEMPTS:
                raise RuntimeError(f"the shell pipeline failed; run {directory / 'pipeline.sh'} by hand to see why")
        container, port = unique("picicd-roundtrip-ob"), free_port()
        janitor.name_prefixes.add(container)
        client.containers.run(f"{image}:latest", name=container, detach=True,
                              ports={"8080/tcp": ("127.0.0.1", port)}, restart_policy={"Name": "unless-stopped"})
        (root / "ouroboros").mkdir(parents=True, exist_ok=True)
        daemon = Daemon(
            # as in bench.peers.cd: -u skips the inspect of every other container's image on a shared daemon
            [str(ouroboros), "-m", container, "-i", str(POLL), "-c", "-u", "-l", "info"],
            root / "ouroboros" / "ouroboros.log", env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(root)},
            cwd=root / "ouroboros",
        )
        url = f"http://127.0.0.1:{port}/"
        daemon.wait_for(lambda: _serves(url, page(0, "shell")) and "Version" in daemon.output(), timeout=60,
                        what="ouroboros started over a serving app")
        def finished(delivery: str) -> float:
            done = directory / f"done-{delivery}"
            hook.daemon.wait_for(lambda: done.exists() and done.read_text().strip(), timeout=ROUND_TIMEOUT,
                                 what="the shell pipeline to finish")
            return float(done.read_text())

        def failed(delivery: str) -> bool:
            done = directory / f"done-{delivery}"
            return done.exists() and done.read_text().strip() == "failed"

        return Way("webhook + shell + ouroboros", "shell", (0, POLL), url, _post(hook.url, 200), finished, failed,
                   stop)
    except BaseException:
        stop()
        raise


def measure(client: Any, janitor: DockerJanitor, root: Path, webhook: str, ouroboros: Path, rounds: int,
            say: Any) -> list[Row]:
    """The two rows: pi-cicd with the hint vs the peer, pi-cicd polling every 30 s vs the same peer runs."""
    hook_port = free_port()
    registry = start_registry(root / "registry",
                              notifications_yaml(f"http://127.0.0.1:{hook_port}/hooks/registry/{HOOK_TOKEN}"))
    project = make_project(_mkdir(root / "git"))
    ways: list[Way] = []
    hint = Row("push → served: a signed delivery to the first answer of the new version (CI run + deploy), "
               "pi-cicd with the registry's notification", "s", "webhook + shell + ouroboros 30 s")
    hint_cd = Row("of which after the pipeline's end (served − CI run finished), with the notification", "s",
                  "ouroboros 30 s")
    poll = Row("the same, pi-cicd polling every 30 s (no hook)", "s", "webhook + shell + ouroboros 30 s")
    poll_cd = Row("of which after the pipeline's end, polling every 30 s", "s", "ouroboros 30 s")
    rows = [hint, hint_cd, poll, poll_cd]
    try:
        say("round trip: starting pi-cicd (hint), pi-cicd (poll 30 s), webhook + shell + ouroboros")
        ways.append(start_pi_cicd("pi-cicd hint", "hint", root / "hint", project, registry, janitor,
                                  hook_port=hook_port))
        ways.append(start_pi_cicd("pi-cicd poll 30 s", "poll", root / "poll", project, registry, janitor,
                                  hook_port=None))
        ways.append(start_peer(root / "peer", project, registry, janitor, client, webhook, ouroboros))
        for index in range(1, rounds + 1):
            for way in ways if index % 2 else ways[::-1]:
                for row in rows:
                    row.mark_load()
                seconds, after_ci = _round(way, project, index, say)
                say(f"round trip {index}: {way.label} served {seconds:.2f} s after the delivery, "
                    f"{after_ci:.2f} s after its pipeline ended")
                if way.slug == "hint":
                    hint.ours.append(seconds)
                    hint_cd.ours.append(after_ci)
                elif way.slug == "poll":
                    poll.ours.append(seconds)
                    poll_cd.ours.append(after_ci)
                else:
                    for total, tail in ((hint, hint_cd), (poll, poll_cd)):
                        total.theirs.append(seconds)
                        tail.theirs.append(after_ci)
        for row in rows:
            row.mark_load()
    finally:
        for way in ways:
            way.stop()
        janitor.cleanup()
        remove_registry_images(client, registry.host)
        registry.stop()
    return rows


def _round(way: Way, project: GitProject, index: int, say: Any) -> tuple[float, float]:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return way.round(project, index)
        except PipelineFailed as exc:
            if attempt == ATTEMPTS:
                raise
            say(f"{exc}; taking the round again")
    raise AssertionError("unreachable")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
