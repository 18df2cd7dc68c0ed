"""The busybox sample app for several platforms, built under QEMU user emulation.

``scripts/emulation`` (run by ``.ci/run``) registers QEMU in binfmt_misc and extracts Debian's static
busybox for arm64 and armhf into ``/var/cache/picicd/busybox/ARCH/bin/busybox``. The app's Dockerfile
picks the busybox of ``TARGETARCH`` (the build argument the CI agent passes, as BuildKit would).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ci_agent.builder import DockerGateway
from ci_agent.git import GitRunner
from ci_agent.payload import ZERO_SHA, PushEvent
from ci_agent.pipeline import Pipeline
from ci_agent.settings import CiSettings
from ci_agent.targets import env_target
from shared.notify import Notifier
from shared.registry import RegistryClient, parse_image_ref
from shared.runstore import Run, RunStore
from shared.testing import RecordingMailer
from tests.support.docker_env import BUSYBOX
from tests.support.git_repos import SAMPLE_TEST, GitProject

BUSYBOX_CACHE = Path(os.environ.get("PICICD_BUSYBOX_CACHE", "/var/cache/picicd/busybox"))

# Docker's TARGETARCH -> Debian's architecture of that busybox.
_DEBIAN = {"arm64": "arm64", "arm": "armhf"}

# The first instruction after FROM scratch must be a COPY: Docker 20.10's classic builder commits an ARG
# (or ENV, LABEL) there with the engine's own platform, and the next COPY then refuses the mismatch.
MULTI_DOCKERFILE = """\
FROM scratch AS base
COPY www/ /www/
ARG TARGETARCH
COPY busybox-${TARGETARCH} /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM base AS test
COPY tests/ /tests/

FROM base
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
"""

# Passes on amd64, fails on arm64: "one platform failing its tests".
FAILS_ON_ARM64 = """\
#!/bin/sh
echo "testing on $(uname -m)"
[ "$(uname -m)" != aarch64 ] || { echo "assertion failed: wrong on arm64"; exit 1; }
echo "sample tests passed"
"""


def busybox_for(arch: str) -> Path:
    """The static busybox for Docker's ``arch`` (``amd64``, ``arm64``, ``arm``)."""
    if arch == "amd64":
        return BUSYBOX
    path = BUSYBOX_CACHE / _DEBIAN[arch] / "bin" / "busybox"
    if not path.is_file():
        pytest.fail(f"no {arch} busybox at {path}: run scripts/emulation (as root; .ci/run does) first")
    return path


def commit_multi_sample(
    project: GitProject, message: str = "multi-platform sample", *, test_script: str = SAMPLE_TEST,
    dockerfile: str = MULTI_DOCKERFILE,
) -> str:
    """Commit the sample app with a busybox per architecture and push it; returns the commit."""
    files: dict[str, str | bytes] = {
        "Dockerfile": dockerfile,
        "www/index.html": "<p>hello</p>\n",
        "tests/run.sh": test_script,
    }
    for arch in ("amd64", "arm64", "arm"):
        files[f"busybox-{arch}"] = busybox_for(arch).read_bytes()
    sha = project.commit(
        files, message, executable=("busybox-amd64", "busybox-arm64", "busybox-arm", "tests/run.sh")
    )
    project.push()
    return sha


@dataclass
class PlatformAgent:
    """A CI pipeline wired as the agent wires it, for a test registry; ``close`` releases what it holds."""

    pipeline: Pipeline
    store: RunStore
    mailer: RecordingMailer
    notifier: Notifier
    registry: RegistryClient
    settings: CiSettings

    def run(self, sha: str, ref: str = "refs/heads/main") -> Run:
        event = PushEvent(
            ref=ref, branch=ref.removeprefix("refs/heads/"), tag=None, after=sha, before=ZERO_SHA, deleted=False,
            repository="owner/app",
        )
        run = self.store.create(kind="ci", commit=sha, ref=ref, details={"event": event.to_details()})
        return self.pipeline.execute(run, event)

    def log(self, run: Run) -> str:
        return Path(run.log_path or "").read_text()

    def emails(self) -> list[Any]:
        assert self.notifier.flush(timeout=10)
        return self.mailer.sent

    def local_references(self) -> list[str]:
        """Every local tag a run of this agent may leave: the janitor's list."""
        image = self.pipeline.image
        tags = ["latest", "ci-test", "0.1.0", "0.1.1"]
        for item in ("linux-amd64", "linux-arm64", "linux-arm-v7", "linux-s390x"):
            tags += [f"ci-staging-{item}", f"ci-test-{item}"]
        return [image.with_tag(tag) for tag in tags]

    def close(self) -> None:
        self.notifier.close(timeout=5)
        self.registry.close()
        self.store.close()


def make_platform_agent(
    root: Path, image: str, repo_url: str, docker: DockerGateway, **overrides: Any
) -> PlatformAgent:
    values: dict[str, Any] = {
        "ci_repo_url": repo_url, "ci_image": image, "ci_allow_unsigned": True,
        "ci_test_command": "sh /tests/run.sh", "ci_test_timeout": 120, "ci_push_attempts": 1,
        "log_dir": root / "logs", "state_dir": root / "state",
        # The classic builder unless a test asks for buildx: CI_BUILDER=auto would take the plugin .ci/run installs.
        "ci_builder": "classic",
    }
    values.update(overrides)
    settings = CiSettings(**values)
    store = RunStore(root / "runs.sqlite3")
    mailer = RecordingMailer()
    notifier = Notifier(mailer, attempts=1)
    registry = RegistryClient(parse_image_ref(image))
    pipeline = Pipeline(
        env_target(settings), store, notifier, GitRunner(timeout=60), docker, registry, push_retry_wait=0.1
    )
    return PlatformAgent(pipeline, store, mailer, notifier, registry, settings)
