"""Releases for the platforms the user names (``CI_PLATFORMS``), built one by one under QEMU user emulation.

Without buildx (Debian 12's ``docker.io``) the engine's classic builder builds one platform at a time
(``platform=``; a foreign one runs its ``RUN`` lines under QEMU user emulation, registered in binfmt_misc).
A release of ``linux/amd64,linux/arm64`` is then::

    test   for each of CI_TEST_PLATFORMS (default: only the engine's own, as without CI_PLATFORMS):
           build the test image for it, run CI_TEST_COMMAND in a container of that platform, time limit each
    build  for each of CI_PLATFORMS: build with platform= and buildx's TARGET*/BUILD* build arguments,
           tagged locally NAME:ci-staging-linux-arm64; that tag and NAME:ci-test-linux-arm64 are the only
           cache of that platform's builds (cache_from: the classic builder's own cache ignores platforms)
    push   the build engine pushes each image under that staging tag, straight to the registry (the Engine
           API pushes only by tag), and reports its digest; then the OCI image index naming those digests
           is PUT under X.Y.Z (and latest), and the staging tags are removed from the registry where it
           allows deletion (``RegistryClient.delete_tags``: the manifests stay, the index names them)

With ``docker buildx`` (``CI_BUILDER``, ``ci_agent/buildx.py``) each platform's test and release images are
built by ``docker buildx build --platform P --load`` instead, under the same local tags; the push and the index
are the same. Each step's log says which builder built.

Nothing is tagged ``X.Y.Z`` before every named platform built and passed its tests: a failure anywhere
stops the run before the index exists; the staging tags are not versions, neither agent ever takes one
for a release. Each built image's own platform is checked against the one asked for: Docker 20.10's
classic builder silently builds on a base image of another platform. Each platform's time is logged
with its emulation factor (its time over the engine's own platform's, when that one is built or tested
in the same step).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ci_agent.errors import Step, StepFailed, TestsFailed
from shared.errors import RegistryError
from shared.platforms import Platform, can_run
from shared.registry import ImageRef, IndexEntry

if TYPE_CHECKING:
    import loguru

    from ci_agent.buildx import Choice

STAGING_PREFIX = "ci-staging-"
TEST_PREFIX = "ci-test-"


def slug(platform: Platform) -> str:
    """``linux/arm/v7`` -> ``linux-arm-v7``: a platform inside a tag or a container name."""
    return str(platform).replace("/", "-")


def staging_tag(platform: Platform) -> str:
    return STAGING_PREFIX + slug(platform)


def platform_build_args(target: Platform, build: Platform) -> dict[str, str]:
    """The build arguments BuildKit sets by itself (``ARG TARGETARCH`` in a Dockerfile written for buildx);
    the classic builder sets none, so they are passed, and win over CI_BUILD_ARGS of the same name."""
    return {
        "TARGETPLATFORM": str(target), "TARGETOS": target.os, "TARGETARCH": target.architecture,
        "TARGETVARIANT": target.variant,
        "BUILDPLATFORM": str(build), "BUILDOS": build.os, "BUILDARCH": build.architecture,
        "BUILDVARIANT": build.variant,
    }


class PlatformBuilder(Protocol):
    """Builds one platform's image and returns its id: ``DockerGateway`` (the classic builder, through the SDK)
    or ``ci_agent.buildx.BuildxCli`` (``docker buildx build --load``), as ``CI_BUILDER`` chose for the run."""

    def build(
        self, context_dir: Path, tags: Sequence[str], *, labels: Mapping[str, str] | None = None,
        target: str | None = None, buildargs: Mapping[str, str] | None = None,
        on_output: Callable[[str], None] = ..., step: Step = "build", platform: str | None = None,
        cache_from: Sequence[str] = (),
    ) -> str: ...


class PlatformEngine(PlatformBuilder, Protocol):
    """What this module needs of ``ci_agent.builder.DockerGateway``."""

    def platform(self) -> Platform: ...

    def run_tests(
        self, image: str, command: str, *, timeout: float, on_output: Callable[[str], None] = ...,
        name: str | None = None, platform: str | None = None,
    ) -> int: ...

    def image_id(self, reference: str) -> str | None: ...

    def image_platform(self, reference: str) -> Platform: ...

    def remove_image(self, reference: str) -> bool: ...


class IndexRegistry(Protocol):
    """What this module needs of ``shared.registry.RegistryClient``."""

    def manifest_digest(self, tag: str) -> str | None: ...

    def entry(self, digest: str, platform: Platform) -> IndexEntry: ...

    def put_index(self, tag: str, entries: Sequence[IndexEntry]) -> str: ...

    def delete_tags(self, tags: Sequence[str], *, note: str) -> None: ...


@dataclass(frozen=True)
class Timing:
    platform: Platform
    seconds: float
    emulated: bool


def timing_lines(what: str, timings: Sequence[Timing], engine: Platform) -> list[str]:
    """``build for linux/arm64 took 41.0s (emulated: 6.2x the linux/amd64 build)``, one line per platform.
    The factor needs the engine's own platform in the same step; without it the line says so."""
    native = next((item.seconds for item in timings if item.platform == engine), None)
    lines = []
    for item in timings:
        text = f"{what} for {item.platform} took {item.seconds:.1f}s"
        if item.emulated and native:
            text += f" (emulated: {item.seconds / native:.1f}x the {engine} {what})"
        elif item.emulated:
            text += f" (emulated; no {engine} {what} in this run to compare with)"
        lines.append(text)
    return lines


class MultiPlatform:
    """The test, build and push of one repository's multi-platform releases (see the module docstring)."""

    def __init__(
        self,
        docker: PlatformEngine,
        registry: IndexRegistry,
        image: ImageRef,
        platforms: Sequence[Platform],
        test_platforms: Sequence[Platform] = (),
        clock: Callable[[], float] = time.monotonic,
        choose: Callable[[Step], Choice] | None = None,
    ) -> None:
        self.docker = docker
        # CI_BUILDER (ci_agent/buildx.py): asked at each step, so a buildx installed later is taken up, and a
        # CI_BUILDER=buildx without one fails that step with the reason. None: the classic builder always.
        self.choose = choose
        self.registry = registry
        self.image = image
        self.platforms = tuple(platforms)  # empty: the engine's own, one image, as without CI_PLATFORMS
        self.test_platforms = tuple(test_platforms)  # empty: the engine's own, tested as without this module
        self.clock = clock

    def test(
        self, checkout: Path, command: str, *, target: str | None, timeout: float, buildargs: Mapping[str, str],
        name: str, log: loguru.Logger,
    ) -> None:
        """CI_TEST_COMMAND in a container of each test platform, one after the other; the first failure stops."""
        engine = self.docker.platform()
        builder = self._builder(log, "test")
        timings = []
        # The engine's own platform by default, built with the TARGET* arguments like every platform here.
        for platform in self.test_platforms or (engine,):
            emulated = not can_run(engine, platform)
            output = _printer(log, f"test {platform}")
            reference = self.image.with_tag(TEST_PREFIX + slug(platform))
            previous = self.docker.image_id(reference)
            log.info("building the test image for {}{}", platform, " under emulation" if emulated else "")
            began = self.clock()
            with _naming(platform, "test"):
                image_id = builder.build(
                    checkout, [reference], target=target, on_output=output, step="test", platform=str(platform),
                    buildargs={**buildargs, **platform_build_args(platform, engine)}, cache_from=self._cache(platform),
                )
                if previous is not None and previous != image_id:
                    self.docker.remove_image(previous)
                self._check_built(image_id, platform, "test")
                log.info("running `sh -c {}` in a {} container of {} (time limit {:g}s)", command, platform,
                         reference, timeout)
                code = self.docker.run_tests(
                    reference, command, timeout=timeout, on_output=output, name=f"{name}-{slug(platform)}",
                    platform=str(platform),
                )
            timings.append(Timing(platform, self.clock() - began, emulated))
            if code != 0:
                raise TestsFailed(f"the test command `{command}` exited with code {code} on {platform}")
        for line in timing_lines("test", timings, engine):
            log.info("{}", line)

    def build(
        self, checkout: Path, labels: Mapping[str, str], buildargs: Mapping[str, str], log: loguru.Logger
    ) -> None:
        """One image per platform of CI_PLATFORMS, tagged locally ``NAME:ci-staging-<platform>``."""
        engine = self.docker.platform()
        builder = self._builder(log, "build")
        timings = []
        for platform in self.platforms:
            emulated = not can_run(engine, platform)
            reference = self.image.with_tag(staging_tag(platform))
            previous = self.docker.image_id(reference)
            log.info("building for {}{}", platform, " under emulation" if emulated else "")
            began = self.clock()
            with _naming(platform, "build"):
                image_id = builder.build(
                    checkout, [reference], labels=labels, on_output=_printer(log, f"build {platform}"),
                    platform=str(platform), buildargs={**buildargs, **platform_build_args(platform, engine)},
                    cache_from=self._cache(platform),
                )
                self._check_built(image_id, platform, "build")
            timings.append(Timing(platform, self.clock() - began, emulated))
            log.info("built {} for {} as {}", image_id, platform, reference)
            if previous is not None and previous != image_id:
                self.docker.remove_image(previous)
        for line in timing_lines("build", timings, engine):
            log.info("{}", line)

    def _builder(self, log: loguru.Logger, step: Step) -> PlatformBuilder:
        if self.choose is None:
            return self.docker
        choice = self.choose(step)
        log.info("{}", choice.says)
        return choice.buildx if choice.buildx is not None else self.docker

    def _cache(self, platform: Platform) -> list[str]:
        # The classic builder's cache ignores the platform: a FROM scratch stage built for amd64 would be
        # reused for arm64. Limited to this platform's own earlier images, each platform has its own cache.
        return [self.image.with_tag(TEST_PREFIX + slug(platform)), self.image.with_tag(staging_tag(platform))]

    def _check_built(self, image_id: str, platform: Platform, step: Step) -> None:
        # The classic builder (Docker 20.10) takes a base image it has locally whatever its platform, and
        # builds on a single-platform base of another one: the result is then not for `platform` at all.
        built = self.docker.image_platform(image_id)
        if built != platform:
            raise StepFailed(step, (
                f"the build made a {built} image, not {platform}: the base image has no {platform} image "
                "(a FROM image that is single-platform, or one the engine already had for another platform)"
            ))

    def push(self, version: str, move_latest: bool, push_tag: Callable[[str], str | None], log: loguru.Logger) -> str:
        """Push every platform's image (``push_tag`` pushes one local tag and returns the reported digest),
        then tag the index of their digests ``version`` (and ``latest``); returns the index digest."""
        entries = []
        for platform in self.platforms:
            tag = staging_tag(platform)
            digest = push_tag(tag) or self.registry.manifest_digest(tag)
            if digest is None:
                raise StepFailed("push", f"the registry has no {self.image.with_tag(tag)} right after its push")
            entries.append(self.registry.entry(digest, platform))
            log.info("pushed the {} image as {}@{}", platform, self.image.name, digest)
        tags = [version, "latest"] if move_latest else [version]
        index = ""
        for tag in tags:
            index = self.registry.put_index(tag, entries)
            log.info("tagged {} as the image index {} of {}", self.image.with_tag(tag), index,
                     ", ".join(str(platform) for platform in self.platforms))
        self._drop_staging_tags(version, log)
        return index

    def _drop_staging_tags(self, version: str, log: loguru.Logger) -> None:
        # The release is out whatever happens here: a registry that refuses deletion keeps the staging tags
        # (they point at the platform manifests the index names, and the next release moves them).
        staging = [staging_tag(platform) for platform in self.platforms]
        try:
            self.registry.delete_tags(staging, note=f"{self.image.name} {version}: {', '.join(staging)}")
        except RegistryError as exc:
            log.warning("the staging tags {} stay in the registry: {}", ", ".join(staging), exc)
            return
        log.info("removed the staging tags {} from the registry (the index keeps their manifests)",
                 ", ".join(staging))


class _naming:
    """Puts the platform into a step's failure message: ``linux/arm64: docker build failed: ...``."""

    def __init__(self, platform: Platform, step: Step) -> None:
        self.platform = platform
        self.step = step

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, TestsFailed):
            raise TestsFailed(f"{self.platform}: {exc.message}") from exc
        if isinstance(exc, StepFailed):
            raise StepFailed(exc.step, f"{self.platform}: {exc.message}") from exc


def _printer(log: loguru.Logger, prefix: str) -> Callable[[str], None]:
    def emit(line: str) -> None:
        log.info("[{}] {}", prefix, line)

    return emit
