"""What a CI run does to the world, as small interfaces: the pipeline and the release guard hold the
policy and see only these.

=====================  =============================================  ================================
interface              real one                                       in-memory fake (tests)
=====================  =============================================  ================================
``Source``             ``ci_agent.git.GitRunner`` (git subprocesses)  ``tests/support/fake_ci.FakeSource``
``ImageBuilder``       ``ci_agent.builder.DockerGateway`` (dockerd)   ``tests/support/fake_ci.FakeBuilder``
``ReleaseRegistry``    ``shared.registry.RegistryClient`` (v2 API)    ``tests/support/fake_ci.FakeRegistry``
``HostRunner``         ``ci_agent.builder.run_host_command``          a function
``EngineDisk``         ``ci_agent.builder.DockerGateway`` (dockerd)   ``tests/unit/test_disk_budget.FakeEngine``
=====================  =============================================  ================================

Errors keep the project's types at this boundary: a failed effect raises ``StepFailed`` (git,
Docker) or a ``shared.errors.RegistryError``, never the library's own exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from ci_agent.disk_budget import EngineDiskState
from ci_agent.multiplatform import IndexRegistry, PlatformEngine
from shared.versions import Commit

OutputSink = Callable[[str], None]


class Source(Protocol):
    """The repository: what the remote has, and the work folder a run checks out into."""

    def checkout(self, repo_url: str, commit_sha: str, workdir: Path) -> str: ...

    def commits(self, workdir: Path, since_sha: str | None, until_sha: str) -> list[Commit]: ...

    def lookup(self, repo_url: str, ref: str) -> tuple[str | None, str]: ...

    def remote_commit(self, repo_url: str, ref: str) -> str | None: ...

    def ensure_commit(self, repo_url: str, workdir: Path, sha: str) -> bool: ...

    def has_commit(self, workdir: Path, sha: str) -> bool: ...

    def is_ancestor(self, workdir: Path, ancestor: str, descendant: str) -> bool: ...


class ImageBuilder(PlatformEngine, Protocol):
    """Builds, tests in a container, tags and pushes images (the Docker Engine); what
    ``ci_agent/multiplatform.py`` needs of it (``PlatformEngine``: platforms, builds, tests), what
    ``CI_DISK_BUDGET`` reads and removes (``EngineDisk``, below), plus:"""

    def disk_state(self) -> EngineDiskState: ...

    def remove_container(self, container_id: str) -> bool: ...

    def prepare(self) -> None: ...

    def engine(self) -> str: ...

    def push(self, repository: str, tag: str, *, on_output: OutputSink = ...) -> str | None: ...

    def close(self) -> None: ...


class ReleaseRegistry(IndexRegistry, Protocol):
    """The image's repository in the registry: its tags and what each release was built from (and, for
    ``ci_agent/multiplatform.py``, ``IndexRegistry``: digests and image indexes)."""

    def list_tags(self) -> list[str]: ...

    def image_labels(self, tag: str) -> dict[str, str]: ...


class HostRunner(Protocol):
    """Runs the test command on the host (``CI_TEST_RUNNER=host``); the exit code."""

    def __call__(
        self, argv: Sequence[str], *, cwd: Path, timeout: float, on_output: OutputSink = ...,
        env: Mapping[str, str] | None = None,
    ) -> int: ...


class EngineDisk(Protocol):
    """What ``CI_DISK_BUDGET`` reads and removes on the engine (``ci_agent/disk_budget.py`` decides what)."""

    def disk_state(self) -> EngineDiskState:
        """The images and containers labelled ``pi-cicd.ci.image``, and the ids of every other image;
        ``StepFailed`` when the engine cannot be asked."""
        ...

    def remove_image(self, reference: str) -> bool:
        """Untag/remove one image reference; False when it is in use or gone (never raises)."""
        ...

    def remove_container(self, container_id: str) -> bool:
        """Remove a stopped container and its volumes; False when it cannot be (never raises)."""
        ...
