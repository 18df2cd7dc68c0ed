"""App releases for the CD tests: tiny busybox web apps built FROM scratch and pushed to the registry.

Every release serves ``/index.html`` (its version) and ``/greeting.txt`` (``$GREETING``) on port 8080,
appends its version to ``/data/history`` (a named volume from CD_VOLUMES) and ``/cache/history`` (an
anonymous volume the image declares with ``VOLUME``) when it starts, and stops at once on SIGTERM.
Variants: ``healthcheck`` (an image HEALTHCHECK), ``stack`` (a HEALTHCHECK that also asks its database,
``http://db:8080/``), ``broken`` (the process exits), ``silent`` (runs but never answers HTTP), and any
``env``/``start`` script to change ENV and CMD.

``python -m tests.support.cd_apps hang-at PHASE VERSION`` deploys with the settings in its environment
and blocks at PHASE (after touching ``$CD_TEST_MARKER``), so a test can SIGKILL a deploy half-way.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from cd_agent.apps import AppTarget, single_target
from cd_agent.deployer import Deployer
from cd_agent.docker_gateway import DockerGateway
from cd_agent.proxy import network_name
from cd_agent.settings import CdSettings
from cd_agent.state import DeployState
from shared.notify import Notifier, notifier_from_settings
from shared.runstore import RunStore
from shared.settings import load_settings
from shared.testing import RecordingMailer
from tests.support.docker_env import DockerJanitor, build_context_tar, busybox_dockerfile, unique
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.registry_server import RegistryServer

Variant = Literal["good", "healthcheck", "stack", "broken", "silent"]

START = """#!/bin/sh
echo "app $APP_VERSION starting"
for dir in /data /cache; do
    if [ -d "$dir" ]; then echo "$APP_VERSION" >> "$dir/history"; fi
done
printf '%s' "$APP_VERSION" > /www/index.html
printf '%s' "$GREETING" > /www/greeting.txt
# PID 1 ignores SIGTERM unless it handles it: without this trap every stop would wait for SIGKILL.
trap 'kill $pid; exit 0' TERM
httpd -f -p 8080 -h /www &
pid=$!
wait
"""

def start_with_cgi(name: str, script: str) -> str:
    """START that also serves ``/cgi-bin/NAME`` running ``script`` (sh; expanded when the app starts, so
    ``$VAR`` is the release's ENV). busybox httpd hands a CGI each request header as ``HTTP_<NAME>`` and
    sends its output as the response, as it is when it starts with ``HTTP/1.1``."""
    path = f"/www/cgi-bin/{name}"
    cgi = f"mkdir -p /www/cgi-bin\ncat > {path} <<CGI\n#!/bin/sh\n{script.rstrip()}\nCGI\nchmod +x {path}\n"
    return START.replace("# PID 1 ignores SIGTERM", cgi + "# PID 1 ignores SIGTERM", 1)


BROKEN = """#!/bin/sh
echo "app $APP_VERSION starting"
echo "fatal: cannot open /etc/app.conf: no such file (release $APP_VERSION)" >&2
exit 3
"""

SILENT = """#!/bin/sh
echo "app $APP_VERSION starting, waiting for a database that never comes"
trap 'exit 0' TERM
while true; do sleep 1; done
"""


@dataclass(frozen=True)
class _Built:
    """A release image built once and pushed once, which later pushes copy inside the registry."""

    registry_url: str
    path: str  # ``owner/app`` inside the registry
    manifest: bytes
    media_type: str
    blobs: tuple[str, ...]  # the config's digest and the layers'


# One build per distinct release (Dockerfile + start script) for the whole session: building costs seconds
# (more on a loaded machine), copying a pushed image to another repository costs milliseconds. Keyed by the
# registry too: a copy only mounts blobs inside one registry.
_BUILT: dict[tuple[str, str, str], _Built] = {}
_MANIFEST_TYPES = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
))


class AppReleases:
    """Builds, pushes and forgets (locally) releases of one app repository in the test registry.

    A release with the same Dockerfile and start script as one pushed earlier in the session (by this or
    another test) is not built again: its manifest and blobs are copied inside the registry to this
    repository, so the registry holds exactly what ``docker push`` put there and, as for a fresh build,
    nothing of it is left in the local image store (the deployer must pull every blob).
    """

    def __init__(self, docker_client: Any, registry: RegistryServer, janitor: DockerJanitor | None = None) -> None:
        self.docker_client = docker_client
        self.registry_url = registry.url
        self.repository = f"{registry.host}/{unique('cdapp')}/app"
        self.janitor = janitor
        self.pushed: list[str] = []
        self._copied: set[tuple[str, str, str]] = set()

    def push(
        self,
        version: str,
        variant: Variant = "good",
        *,
        env: Mapping[str, str] | None = None,
        start: str | None = None,
        keep_local: bool = False,
        health_url: str = "http://127.0.0.1:8080/",
    ) -> str:
        """Build and push ``repository:version``; the local tag is removed so the deployer must pull.
        ``health_url``: what the ``healthcheck`` variant's HEALTHCHECK asks (a stack's ``http://db:8080/``)."""
        script = start or {
            "good": START, "healthcheck": START, "stack": START, "broken": BROKEN, "silent": SILENT
        }[variant]
        extra = ""
        if variant == "healthcheck":
            # Written here: docker 20.10 refuses the helper's --start-period=0s.
            extra = (
                "HEALTHCHECK --interval=300ms --timeout=2s --retries=3"
                f' CMD ["wget", "-q", "-O", "/dev/null", "{health_url}"]'
            )
        if variant == "stack":
            extra = (
                "HEALTHCHECK --interval=300ms --timeout=2s --retries=3 CMD"
                ' ["sh", "-c", "wget -q -O /dev/null http://db:8080/ && wget -q -O /dev/null http://127.0.0.1:8080/"]'
            )
        dockerfile = busybox_dockerfile(
            cmd=["/app/start.sh"],
            env={"APP_VERSION": version, "GREETING": "hello", **(env or {})},
            volumes=["/cache"],
            extra=extra,
        )
        reference = f"{self.repository}:{version}"
        if self.janitor is not None:
            self.janitor.images.add(reference)
        key = (self.registry_url, dockerfile, script)
        # The same release twice in one repository is a rebuild (a new digest), as a test pushing it again means.
        if keep_local or key in self._copied or not self._copy(_BUILT.get(key), version):
            self._build_and_push(dockerfile, script, version, keep_local=keep_local)
            if not keep_local:
                _BUILT[key] = self._built(version)
        self._copied.add(key)
        self.pushed.append(version)
        return reference

    def alias(self, version: str, *others: str) -> None:
        """Tag the pushed release ``version`` as each of ``others`` too (what ``docker tag`` and ``docker push``
        of one image under more tags leave in the registry): one build for many releases."""
        with httpx.Client(base_url=self.registry_url, timeout=30) as http:
            answer = http.get(f"/v2/{self._path}/manifests/{version}", headers={"Accept": _MANIFEST_TYPES})
            answer.raise_for_status()
            for other in others:
                put = http.put(
                    f"/v2/{self._path}/manifests/{other}",
                    content=answer.content,
                    headers={"Content-Type": answer.headers["content-type"]},
                )
                assert put.status_code == 201, put.text
                if self.janitor is not None:
                    self.janitor.images.add(f"{self.repository}:{other}")
                self.pushed.append(other)

    def _build_and_push(self, dockerfile: str, script: str, version: str, *, keep_local: bool) -> None:
        reference = f"{self.repository}:{version}"
        self.docker_client.images.build(
            fileobj=build_context_tar(dockerfile, {"app/start.sh": script, "www/": "", "tmp/": ""}),
            custom_context=True,
            tag=reference,
            rm=True,
            nocache=True,  # no cache parents shared with other builds, so removing this image races no one
        )
        for line in self.docker_client.images.push(self.repository, tag=version, stream=True, decode=True):
            if "error" in line:
                raise RuntimeError(f"push {reference}: {line['error']}")
        if not keep_local:
            self.docker_client.images.remove(reference)

    @property
    def _path(self) -> str:
        return self.repository.split("/", 1)[1]

    def _built(self, version: str) -> _Built:
        with httpx.Client(base_url=self.registry_url, timeout=30) as http:
            answer = http.get(f"/v2/{self._path}/manifests/{version}", headers={"Accept": _MANIFEST_TYPES})
            answer.raise_for_status()
        manifest = answer.json()
        blobs = (manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"]))
        return _Built(self.registry_url, self._path, answer.content, answer.headers["content-type"], blobs)

    def _copy(self, built: _Built | None, version: str) -> bool:
        """Put ``built`` under ``version`` in this repository by mounting its blobs; False if that failed
        (e.g. its registry was stopped), and the caller builds instead."""
        if built is None:
            return False
        try:
            with httpx.Client(base_url=self.registry_url, timeout=30) as http:
                for digest in built.blobs:
                    mounted = http.post(
                        f"/v2/{self._path}/blobs/uploads/", params={"mount": digest, "from": built.path}
                    )
                    if mounted.status_code != 201:
                        return False
                put = http.put(
                    f"/v2/{self._path}/manifests/{version}",
                    content=built.manifest,
                    headers={"Content-Type": built.media_type},
                )
                return put.status_code == 201
        except httpx.HTTPError:
            return False


class HttpProbe:
    """GETs ``url`` every ``interval`` seconds on a thread; ``longest_outage`` is the longest time
    between a good answer and the next one."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        self.url = url
        self.interval = interval
        self.samples: list[tuple[float, bool, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-probe", daemon=True)

    def __enter__(self) -> HttpProbe:
        self._thread.start()
        # A baseline first: an outage is measured from the last good answer before it.
        wait_for(lambda: any(ok for _, ok, _ in self.samples), timeout=10, what=f"a first answer from {self.url}")
        return self

    def wait_serving(self, body: str, timeout: float = 15) -> None:
        """Wait until the latest answer is a good one with ``body`` (the outage, if any, is over)."""
        count = len(self.samples)

        def serving() -> bool:
            latest = self.samples[-1]
            return len(self.samples) > count and latest[1] and latest[2] == body

        wait_for(serving, timeout=timeout, what=f"{self.url} to answer {body!r}")

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with httpx.Client(timeout=0.5) as client:
            while not self._stop.is_set():
                moment = time.monotonic()
                try:
                    response = client.get(self.url)
                    self.samples.append((moment, response.status_code == 200, response.text))
                except httpx.HTTPError as exc:
                    self.samples.append((moment, False, type(exc).__name__))
                self._stop.wait(self.interval)

    @property
    def longest_outage(self) -> float:
        longest, last_good = 0.0, None
        for moment, ok, _ in self.samples:
            if ok:
                if last_good is not None:
                    longest = max(longest, moment - last_good)
                last_good = moment
        return longest

    def answers(self) -> list[str]:
        """The distinct bodies seen, in order (e.g. ["1.0.0", "1.0.1"])."""
        seen: list[str] = []
        for _, ok, text in self.samples:
            if ok and (not seen or seen[-1] != text):
                seen.append(text)
        return seen


@dataclass
class CdWorld:
    """One app container under test: its settings, deployer, releases and loopback port."""

    docker_client: Any
    janitor: DockerJanitor
    releases: AppReleases
    root: Path
    name: str = field(default_factory=lambda: unique("picicd-cd"))
    port: int = field(default_factory=free_port)
    mailer: RecordingMailer = field(default_factory=RecordingMailer)
    overrides: dict[str, str] = field(default_factory=dict)
    _closers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.janitor.name_prefixes.add(self.name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def volume(self) -> str:
        return f"{self.name}-data"

    def environ(self, **overrides: str) -> dict[str, str]:
        env = {
            "CD_IMAGE": self.releases.repository,
            "CD_CONTAINER_NAME": self.name,
            "CD_PORTS": f"127.0.0.1:{self.port}:8080",
            "CD_VOLUMES": f"{self.volume}:/data",
            "CD_RESTART_POLICY": "unless-stopped",
            "CD_HEALTH_TIMEOUT": "8",
            "CD_HEALTH_GRACE": "1",
            "CD_STOP_TIMEOUT": "2",
            # Every poll in the state file at once: tests follow the watcher's polls through `cd-agent status`
            # (the default keeps them in memory for 15 min; tests/integration/test_idle_writes.py uses it).
            "CD_STATE_FLUSH_INTERVAL": "0",
            "LOG_DIR": str(self.root / "logs"),
            "STATE_DIR": str(self.root / "state"),
        }
        env.update(self.overrides)
        env.update(overrides)
        # A swap deploy is proven by the release's answer on this world's port, as soon as it answers, rather
        # than by running through CD_HEALTH_GRACE (a second a deploy, hundreds in the suite). Other strategies
        # and other ports keep what they set; CD_HEALTH_URL="" keeps the grace path for the tests about it.
        if env.get("CD_HEALTH_URL") == "":
            del env["CD_HEALTH_URL"]
        elif (
            "CD_HEALTH_URL" not in env and env.get("CD_STRATEGY", "swap") == "swap"
            and env["CD_PORTS"] == f"127.0.0.1:{self.port}:8080"
        ):
            env["CD_HEALTH_URL"] = self.url
        return env

    def settings(self, **overrides: str) -> CdSettings:
        return load_settings(CdSettings, self.environ(**overrides))

    def target(self, **overrides: str) -> AppTarget:
        return single_target(self.settings(**overrides))

    def deployer(self, **overrides: str) -> Deployer:
        settings = self.settings(**overrides)
        notifier = notifier_from_settings(settings) if settings.email_enabled else Notifier(self.mailer, attempts=1)
        deployer = build_deployer(settings, notifier)
        self._closers.append(deployer)
        return deployer

    def deploy_first(self, version: str) -> None:
        """Deploy ``version`` in this process as the starting point of a test, and close that deployer (its
        state and run databases) so the agent processes the test starts next own them alone. What a
        ``cd-agent deploy`` process would do, without the seconds it takes to start one."""
        deployer = build_deployer(self.settings(), Notifier(self.mailer, attempts=1))
        try:
            report = deployer.deploy(version)
        finally:
            deployer.notifier.close(5)
            deployer.state.close()
            deployer.runs.close()
            deployer.docker.close()
        assert report.outcome == "deployed", report

    def served(self, path: str = "") -> str | None:
        try:
            response = httpx.get(self.url + path, timeout=1)
        except httpx.HTTPError:
            return None
        return response.text if response.status_code == 200 else None

    def read_in_app(self, path: str) -> str:
        container = self.docker_client.containers.get(self.name)
        code, output = container.exec_run(["cat", path])
        assert code == 0, output
        return str(output.decode())

    def _listed(self) -> list[dict[str, Any]]:
        # The low-level list needs no inspect per container, so containers that other tests remove
        # meanwhile cannot make it fail.
        listed = self.docker_client.api.containers(all=True, filters={"name": self.name})
        return [item for item in listed if any(n.lstrip("/").startswith(self.name) for n in item["Names"])]

    def containers(self) -> list[str]:
        return sorted(item["Names"][0].lstrip("/") for item in self._listed())

    def use_smtp(self, host: str, port: int) -> None:
        """Send this world's emails through a real SMTP server (tests.support.smtp_server)."""
        self.overrides.update(
            SMTP_HOST=host, SMTP_PORT=str(port), SMTP_SECURITY="none",
            NOTIFY_FROM="cd@pi.test", NOTIFY_TO="owner@pi.test",
        )

    def close(self) -> None:
        for deployer in self._closers:
            deployer.notifier.close(5)
            deployer.state.close()
            deployer.runs.close()
            deployer.docker.close()
        # Anonymous volumes carried over from container to container are mounted by name, so
        # `docker rm -v` keeps them: collect them for the janitor.
        for item in self._listed():
            for mount in item.get("Mounts") or []:
                if mount.get("Type") == "volume" and mount.get("Name"):
                    self.janitor.volumes.add(mount["Name"])
        # Blue-green: the proxy container goes with the name prefix; its network after the containers.
        self.janitor.networks.add(network_name(self.name))


def build_deployer(settings: CdSettings, notifier: Notifier, **kwargs: Any) -> Deployer:
    target = single_target(settings)
    docker = DockerGateway.from_env()
    return Deployer(
        target,
        docker,
        DeployState(target.paths.state),
        RunStore(target.paths.runs),
        notifier,
        log_retention=settings.log_retention_runs,
        **kwargs,
    )


@pytest.fixture
def cd_world(
    docker_client: Any, docker_janitor: DockerJanitor, registry: RegistryServer, tmp_path: Path
) -> Iterator[CdWorld]:
    world = CdWorld(docker_client, docker_janitor, AppReleases(docker_client, registry, docker_janitor), tmp_path)
    yield world
    world.close()


def kill_deploy_at(world: CdWorld, phase: str, version: str) -> None:
    """The real Deployer in its own process (settings from ``world``), blocked right after journalling
    ``phase``, then SIGKILLed: a crash in the middle of a deploy, at a known point."""
    marker = world.root / f"reached-{phase}"
    env = clean_environ({**world.environ(), "CD_TEST_MARKER": str(marker)})
    with subprocess.Popen(
        [sys.executable, "-m", "tests.support.cd_apps", "hang-at", phase, version],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    ) as process:
        try:
            wait_for(lambda: marker.exists() or process.poll() is not None, timeout=60, what=f"the deploy at {phase}")
            assert marker.exists(), process.stderr.read().decode() if process.stderr else "the deploy ended early"
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


REPO = Path(__file__).resolve().parents[2]


def clean_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The test process's environment without any pi-cicd settings, plus ``environ``: what an agent
    started for a test sees. A watcher's status listener gets a free port unless ``environ`` names one
    (several watchers run at once, and CD_DASHBOARD_PORT's default, 8002, may be taken)."""
    prefixes = ("CD_", "CI_", "SMTP_", "NOTIFY_", "REGISTRY_", "LOG_", "STATE_DIR")
    base = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    base["PYTHONPATH"] = str(REPO)
    base["CD_DASHBOARD_PORT"] = str(free_port())
    return {**base, **environ}


def cd_agent(*args: str, environ: dict[str, str], cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``cd-agent ARGS`` as a real process with exactly the settings in ``environ``."""
    return subprocess.run(
        [sys.executable, "-m", "cd_agent", *args],
        env=clean_environ(environ), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )


def status_json(world: CdWorld) -> dict[str, Any]:
    result = cd_agent("status", "--json", environ=world.environ(), cwd=world.root)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def version_of(release: dict[str, Any] | None) -> str | None:
    return None if release is None else str(release["version"])


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \|")


class WatchProcess:
    """``python -m cd_agent watch`` with its console log in a file (no pipe: every line is flushed to it as
    it is logged, by the watcher and its deploy processes alike). A line logged *after* the state a test
    waits for (``reconcile: ...``, ``[app] deployed X``) must still be waited for, not read once."""

    def __init__(self, environ: dict[str, str], cwd: Path) -> None:
        self.log_path = cwd / f"watch-{datetime.now(UTC):%H%M%S%f}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cd_agent", "watch"],
                env=clean_environ(environ), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log().splitlines() if text in line]

    def logged_at(self, text: str) -> datetime:
        """When the first line containing ``text`` was logged (the console format starts with UTC time)."""
        line: str = wait_for(lambda: next(iter(self.lines(text)), ""), timeout=60, what=f"log line {text!r}")
        match = _STAMP.match(line)
        assert match, line
        return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)

    def settled_on(self, world: CdWorld, version: str) -> bool:
        """``version`` serves and is recorded as current, no deploy in progress (a ``wait_for`` predicate);
        the watcher must still run."""
        assert self.process.poll() is None, self.log()[-3000:]
        status = state_json(world)
        return world.served() == version and version_of(status["current"]) == version \
            and status["deploy_in_progress"] is None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def killed_then_watched(world: CdWorld, phase: str, version: str, watches: list[WatchProcess]) -> str:
    """``kill_deploy_at`` then ``cd-agent watch`` (polling every second) until ``version`` serves and is
    recorded; returns the start-up reconcile line. The watcher is stopped, and must exit 0."""
    kill_deploy_at(world, phase, version)
    assert state_json(world)["deploy_in_progress"] is not None
    watch = WatchProcess(world.environ(CD_POLL_INTERVAL="1"), world.root)
    watches.append(watch)
    wait_for(lambda: watch.settled_on(world, version), timeout=180, what=f"{version} serving and recorded")
    said: str = wait_for(lambda: watch.lines("reconcile:"), timeout=30, what="the reconcile line")[0]
    assert watch.stop() == 0, watch.log()[-3000:]
    return said


@pytest.fixture
def watches() -> Iterator[list[WatchProcess]]:
    """``cd-agent watch`` processes of a test, killed afterwards whatever happened."""
    started: list[WatchProcess] = []
    yield started
    for process in started:
        process.kill()


def state_json(world: CdWorld) -> dict[str, Any]:
    """What `cd-agent status --json` shows, read in-process: a `cd-agent status` process per look costs
    about a second of CPU while a test polls for a state."""
    with DeployState(world.target().paths.state) as state:
        return state.to_json()


def _hang_at(phase: str, version: str) -> None:
    """Deploy ``version`` and block forever at ``phase`` (the test then SIGKILLs this process)."""
    from shared.settings import read_environment

    settings = load_settings(CdSettings, read_environment(None))
    marker = Path(os.environ["CD_TEST_MARKER"])

    def block(reached: str) -> None:
        if reached == phase:
            marker.write_text(reached)
            threading.Event().wait()

    build_deployer(settings, Notifier(None), on_phase=block).deploy(version)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "hang-at":
        _hang_at(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m tests.support.cd_apps hang-at PHASE VERSION")
