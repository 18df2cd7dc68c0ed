"""``docker buildx`` for the multi-platform builds (``CI_BUILDER``), one platform per build.

Debian 12's ``docker.io`` (Docker 20.10) has no buildx; Debian 13's ``docker-buildx`` package is the plugin, and
runs on Debian 12 too (``scripts/buildx`` installs it). What it can do against a 20.10 engine decides how it is
used here: its ``docker`` driver builds with the engine's own BuildKit, one platform per build (``--platform
linux/arm64``, a foreign one's ``RUN`` lines under QEMU user emulation), loaded into the engine's image store
(``--load``). A multi-platform ``--push`` needs a ``docker-container`` builder (the ``moby/buildkit`` image,
from Docker Hub) or the containerd image store (Docker 24+). So buildx builds each platform's image under the
same staging tag the classic builder would, and ``ci_agent/multiplatform.py`` pushes and assembles the index
through the registry API exactly as for the classic builder: one release path, two builders.

The CLI talks to the engine of ``DOCKER_HOST`` (the local one); a build engine elsewhere
(``CI_BUILD_DOCKER_HOST``) is reached through the Docker SDK, whose builds are the classic builder's.

Every failure becomes ``StepFailed(step, ...)`` here, naming BuildKit's ``ERROR:`` line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ci_agent.builder import run_host_command, split_tag
from ci_agent.disk_budget import OWNER_LABEL
from ci_agent.errors import Step, StepFailed
from ci_agent.settings import BuilderSetting

_VERSION = re.compile(r"^github\.com/docker/buildx\s+(?P<version>\S+)", re.MULTILINE)
PROBE_TIMEOUT = 30.0


def buildx_version(docker: str = "docker", timeout: float = PROBE_TIMEOUT) -> str | None:
    """``0.13.1+ds1`` when ``docker buildx version`` answers (the plugin is installed), else None."""
    program = shutil.which(docker)
    if program is None:
        return None
    try:
        done = subprocess.run(
            [program, "buildx", "version"], capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(done.stdout)
    return match["version"] if done.returncode == 0 and match else None


class BuildxCli:
    """``docker buildx build --platform P --load`` into the local engine, shaped like ``DockerGateway.build``.

    ``timeout`` (``CI_BUILD_TIMEOUT``) bounds one build; at that time the CLI is killed, which cancels the build.
    """

    def __init__(self, version: str, *, docker: str = "docker", timeout: float = 1800.0) -> None:
        self.version = version
        self.docker = docker
        self.timeout = timeout

    def build(
        self,
        context_dir: Path,
        tags: Sequence[str],
        *,
        labels: Mapping[str, str] | None = None,
        target: str | None = None,
        buildargs: Mapping[str, str] | None = None,
        on_output: Callable[[str], None] = lambda _: None,
        step: Step = "build",
        platform: str | None = None,
        cache_from: Sequence[str] = (),
    ) -> str:
        """Build and load one platform's image under every tag in ``tags``; returns its image id.

        ``cache_from`` is the classic builder's workaround for its platform-blind cache; BuildKit keeps a cache per
        platform by itself, so it is not used."""
        del cache_from
        if not tags:
            raise ValueError("build needs at least one tag")
        # Every image CI builds says so, and for which repository: CI_DISK_BUDGET prunes only those.
        labels = {**(labels or {}), OWNER_LABEL: split_tag(tags[0])[0]}
        handle, iidfile = tempfile.mkstemp(prefix="picicd-buildx-", suffix=".iid")
        os.close(handle)
        argv = [self.docker, "buildx", "build", "--load", "--progress", "plain", "--iidfile", iidfile]
        if platform:
            argv += ["--platform", platform]
        if target:
            argv += ["--target", target]
        for tag in tags:
            argv += ["--tag", tag]
        for key, value in sorted(labels.items()):
            argv += ["--label", f"{key}={value}"]
        for key, value in sorted((buildargs or {}).items()):
            argv += ["--build-arg", f"{key}={value}"]
        argv.append(str(context_dir))
        errors: list[str] = []

        def output(line: str) -> None:
            if line.startswith(("ERROR:", "ERROR ")):
                errors.append(line.removeprefix("ERROR:").strip())
            on_output(line)

        try:
            try:
                code = run_host_command(argv, cwd=context_dir, timeout=self.timeout, on_output=output)
            except StepFailed as exc:  # the time limit, or no docker CLI: the runner speaks of a test command
                raise StepFailed(step, f"docker buildx build for {platform or 'the engine'}: {exc.message}"
                                 .replace("the test command", "the build")) from exc
            if code != 0:
                reason = errors[-1] if errors else f"it exited with code {code}"
                raise StepFailed(step, f"docker buildx build failed: {reason}")
            image_id = Path(iidfile).read_text(encoding="utf-8").strip()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(iidfile)
        if not image_id:
            raise StepFailed(step, "docker buildx build said nothing about the image it built (an empty --iidfile)")
        return image_id


@dataclass(frozen=True)
class Choice:
    """The builder of one run's multi-platform steps, and the log line that says which and why."""

    buildx: BuildxCli | None
    says: str


def choose_builder(
    setting: BuilderSetting, build_host: str | None, *, timeout: float = 1800.0,
    probe: Callable[[], str | None] = buildx_version,
) -> Choice:
    """``CI_BUILDER``: ``auto`` takes buildx when the local CLI has it and the engine is the local one, ``buildx``
    insists (``StepFailed`` when it cannot be had), ``classic`` never asks."""
    classic = "the classic builder (Docker SDK"
    if setting == "classic":
        return Choice(None, f"builder: {classic}; CI_BUILDER=classic)")
    if build_host is not None:
        if setting == "buildx":  # refused at start-up for CI_BUILD_DOCKER_HOST; a repos file's table is checked here
            raise StepFailed("build", "CI_BUILDER=buildx builds on the local engine only, but this repository builds "
                             f"on {build_host} (build_docker_host): unset one of them")
        return Choice(None, f"builder: {classic}; buildx builds on the local engine only, this one is {build_host})")
    version = probe()
    if version is None:
        if setting == "buildx":
            raise StepFailed("build", "CI_BUILDER=buildx, but `docker buildx version` does not answer: install the "
                             "docker-buildx plugin (Debian 13's docker-buildx package; scripts/buildx) or set "
                             "CI_BUILDER=auto")
        return Choice(None, f"builder: {classic}; no `docker buildx` on this machine)")
    return Choice(
        BuildxCli(version, timeout=timeout),
        f"builder: docker buildx {version} (the engine's BuildKit, one platform per build, docker driver)",
    )
