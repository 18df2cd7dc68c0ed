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
import json
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
from shared.platforms import Platform, parse_platform
from shared.platforms import platform as image_platform

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
        bases: dict[str, str] = {}  # "ref@sha256:..." -> the stage BuildKit built on it

        def output(line: str) -> None:
            if line.startswith(("ERROR:", "ERROR ")):
                errors.append(_WRAPPERS.sub("", line.removeprefix("ERROR:")).strip())
            elif match := _FROM_LINE.match(line):
                bases.setdefault(match["ref"], match["stage"] or "")
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
        if platform:
            self._check_bases(context_dir, bases, parse_platform(platform), step, on_output)
        return image_id

    def _check_bases(
        self, context_dir: Path, bases: Mapping[str, str], wanted: Platform, step: Step,
        on_output: Callable[[str], None],
    ) -> None:
        """Refuse a build on a single-platform base image of another platform.

        The engine's BuildKit (v0.8 in Docker 20.10) picks the platform out of an index, and refuses an index
        without it, but builds on a plain image manifest of another platform without a word, and labels the
        result with the platform asked for: an "arm64" image with amd64 programs. So each base it resolved
        (``FROM ref@sha256:...`` in its output) that is a plain image is looked at with ``docker buildx
        imagetools inspect`` (the CLI's credentials, as the build's). Stages with their own ``FROM
        --platform=...`` (a cross-compiling stage on ``$BUILDPLATFORM``) are meant to differ and are skipped."""
        pinned = _pinned_stages(context_dir / "Dockerfile")
        for reference, stage in bases.items():
            if stage.lower() in pinned:
                continue
            found = self._base_platform(reference, context_dir)
            if isinstance(found, str):
                on_output(f"could not check the platform of the base image {reference}: {found}")
            elif found is not None and found != wanted:
                raise StepFailed(step, (
                    f"the base image {reference} is a single-platform {found} image, not {wanted}: BuildKit built on "
                    f"it all the same (use a base image that has a {wanted} image, or an index that names one)"
                ))

    def _base_platform(self, reference: str, cwd: Path) -> Platform | str | None:
        """The platform of a plain image; None for an index (BuildKit chose from it); a str: why it is unknown."""
        try:
            done = subprocess.run(
                [self.docker, "buildx", "imagetools", "inspect", "--format", "{{json .Image}}", reference],
                capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False, cwd=cwd, stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode != 0:
            return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        try:
            image = json.loads(done.stdout)
        except ValueError:
            return "docker buildx imagetools inspect answered no JSON"
        if not isinstance(image, dict) or "architecture" not in image:
            return None  # an index: {"linux/amd64": {...}, ...}
        return image_platform(str(image.get("os") or ""), str(image["architecture"]), str(image.get("variant") or ""))


# gRPC's and the frontend's wrappers around BuildKit's reason, in its ERROR line.
_WRAPPERS = re.compile(
    r"rpc error: code = \w+ desc = |failed to solve with frontend dockerfile\.v0: |failed to create LLB definition: "
)
# BuildKit's plain progress for a resolved base image: "#4 [base 1/2] FROM host/busybox:1.0@sha256:..." (no stage
# name when the Dockerfile has one stage).
_FROM_LINE = re.compile(r"^#\d+ \[(?:(?P<stage>\S+) )?\d+/\d+\] FROM (?P<ref>\S+@sha256:[0-9a-f]{64})\s*$")
_DOCKERFILE_FROM = re.compile(
    r"^\s*FROM\s+(?P<flags>(?:--\S+\s+)*)\S+(?:\s+AS\s+(?P<name>\S+))?\s*$", re.IGNORECASE | re.MULTILINE
)


def _pinned_stages(dockerfile: Path) -> set[str]:
    """The stages with a ``--platform`` of their own, as BuildKit names them in its output (the ``AS`` name, else
    ``stage-N``; "" for the only stage of a one-stage Dockerfile)."""
    try:
        text = dockerfile.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    stages = list(_DOCKERFILE_FROM.finditer(text))
    pinned = set()
    for index, match in enumerate(stages):
        if "--platform" in match["flags"].lower():
            pinned.add("" if len(stages) == 1 else (match["name"] or f"stage-{index}").lower())
    return pinned


@dataclass(frozen=True)
class Choice:
    """The builder of one run's multi-platform steps, and the log line that says which and why."""

    buildx: BuildxCli | None
    says: str


def choose_builder(
    setting: BuilderSetting, build_host: str | None, *, step: Step = "build", timeout: float = 1800.0,
    probe: Callable[[], str | None] = buildx_version,
) -> Choice:
    """``CI_BUILDER``: ``auto`` takes buildx when the local CLI has it and the engine is the local one, ``buildx``
    insists (``StepFailed(step, ...)`` when it cannot be had: the step about to build), ``classic`` never asks."""
    classic = "the classic builder (Docker SDK"
    if setting == "classic":
        return Choice(None, f"builder: {classic}; CI_BUILDER=classic)")
    if build_host is not None:
        if setting == "buildx":  # refused at start-up for CI_BUILD_DOCKER_HOST; a repos file's table is checked here
            raise StepFailed(step, "CI_BUILDER=buildx builds on the local engine only, but this repository builds "
                             f"on {build_host} (build_docker_host): unset one of them")
        return Choice(None, f"builder: {classic}; buildx builds on the local engine only, this one is {build_host})")
    version = probe()
    if version is None:
        if setting == "buildx":
            raise StepFailed(step, "CI_BUILDER=buildx, but `docker buildx version` does not answer: install the "
                             "docker-buildx plugin (Debian 13's docker-buildx package; scripts/buildx) or set "
                             "CI_BUILDER=auto")
        return Choice(None, f"builder: {classic}; no `docker buildx` on this machine)")
    return Choice(
        BuildxCli(version, timeout=timeout),
        f"builder: docker buildx {version} (the engine's BuildKit, one platform per build, docker driver)",
    )
