"""In-memory fakes of a CI run's effects (``ci_agent/effects.py``): a repository, an image builder, a registry.

They keep what the policy can observe and nothing else: ``FakeSource`` is a commit graph with refs
and a local clone (what was fetched), ``FakeRegistry`` maps tags to the labels of their images,
``FakeBuilder`` builds images from the labels it is given and pushes them into the registry. Each
can be told to fail (``test_exit``, ``build_error``, ``push_failures``) the way the real one does:
with ``StepFailed``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

from ci_agent.disk_budget import EngineDiskState
from ci_agent.effects import OutputSink
from ci_agent.errors import Step, StepFailed
from shared.errors import RegistryNotFound
from shared.platforms import Platform, parse_platforms
from shared.registry import IndexEntry
from shared.versions import Commit

SAMPLE_DOCKERFILE = "FROM scratch AS base\nCOPY www/ /www/\n\nFROM base AS test\nCOPY tests/ /tests/\n\nFROM base\n"
_counter = itertools.count(1)


def _discard(line: str) -> None:
    return None


def new_sha(seed: str) -> str:
    return hashlib.sha1(f"{seed}-{next(_counter)}".encode()).hexdigest()  # noqa: S324 - a made-up commit id


class FakeSource:
    """A remote repository (commits, branches, tags) and the agent's clone of it."""

    def __init__(self) -> None:
        self.parents: dict[str, list[str]] = {}
        self.messages: dict[str, str] = {}
        self.files: dict[str, dict[str, str]] = {}
        self.refs: dict[str, str] = {}
        self.local: set[str] = set()
        self.checkouts: list[str] = []

    # -- what a test does to the remote ------------------------------------------------------------

    def commit(
        self, message: str = "change", *, branch: str = "main", parent: str | None = None,
        files: Mapping[str, str] | None = None,
    ) -> str:
        ref = f"refs/heads/{branch}"
        base = parent if parent is not None else self.refs.get(ref)
        sha = new_sha(message)
        self.parents[sha] = [base] if base else []
        self.messages[sha] = message
        inherited = dict(self.files.get(base, {})) if base else {"Dockerfile": SAMPLE_DOCKERFILE}
        self.files[sha] = {**inherited, **(files or {})}
        self.refs[ref] = sha
        return sha

    def tag(self, name: str, sha: str) -> None:
        self.refs[f"refs/tags/{name}"] = sha

    def force_branch(self, branch: str, sha: str) -> None:
        self.refs[f"refs/heads/{branch}"] = sha

    def ancestors(self, sha: str) -> set[str]:
        seen: set[str] = set()
        todo = [sha]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            todo.extend(self.parents.get(current, []))
        return seen

    # -- Source ------------------------------------------------------------------------------------

    def checkout(self, repo_url: str, commit_sha: str, workdir: Path) -> str:
        if commit_sha not in self.parents:
            raise StepFailed("checkout", f"commit {commit_sha} is not in {repo_url}")
        workdir.mkdir(parents=True, exist_ok=True)
        for name, content in self.files[commit_sha].items():
            path = workdir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        self.local |= self.ancestors(commit_sha)
        self.checkouts.append(commit_sha)
        return commit_sha

    def commits(self, workdir: Path, since_sha: str | None, until_sha: str) -> list[Commit]:
        excluded = self.ancestors(since_sha) if since_sha else set()
        chain = [sha for sha in self.ancestors(until_sha) if sha not in excluded]
        return [Commit(sha, self.messages[sha]) for sha in chain]

    def lookup(self, repo_url: str, ref: str) -> tuple[str | None, str]:
        for name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
            if name in self.refs:
                return name, self.refs[name]
        if ref in self.parents:
            return None, ref
        raise StepFailed("checkout", f"no branch or tag {ref!r} in {repo_url}")

    def remote_commit(self, repo_url: str, ref: str) -> str | None:
        return self.refs.get(ref)

    def ensure_commit(self, repo_url: str, workdir: Path, sha: str) -> bool:
        if sha not in self.parents:
            return False
        self.local |= self.ancestors(sha)
        return True

    def has_commit(self, workdir: Path, sha: str) -> bool:
        return sha in self.local

    def is_ancestor(self, workdir: Path, ancestor: str, descendant: str) -> bool:
        return ancestor in self.ancestors(descendant)


class FakeRegistry:
    """One image repository: tag -> the labels of its image (single-platform releases only)."""

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, str]] = {}

    def manifest_digest(self, tag: str) -> str | None:
        return None if tag not in self.tags else "sha256:" + hashlib.sha256(tag.encode()).hexdigest()

    def entry(self, digest: str, platform: Platform) -> IndexEntry:
        raise NotImplementedError("the fake registry holds single-platform releases only")

    def put_index(self, tag: str, entries: Sequence[IndexEntry]) -> str:
        raise NotImplementedError("the fake registry holds single-platform releases only")

    def delete_tags(self, tags: Sequence[str], *, note: str) -> None:
        raise NotImplementedError("the fake registry holds single-platform releases only")

    def list_tags(self) -> list[str]:
        return list(self.tags)

    def image_labels(self, tag: str) -> dict[str, str]:
        if tag not in self.tags:
            raise RegistryNotFound(f"no tag {tag}")
        return dict(self.tags[tag])


class FakeBuilder:
    """Builds images as label sets, runs tests with ``test_exit``, pushes into ``registry``."""

    def __init__(self, registry: FakeRegistry) -> None:
        self.registry = registry
        self.images: dict[str, str] = {}  # reference -> image id
        self.labels: dict[str, dict[str, str]] = {}  # image id -> labels
        self.builds: list[tuple[list[str], str | None]] = []  # (tags, target) of each build
        self.tests: list[str] = []
        self.pushes: list[str] = []
        self.test_exit = 0
        self.build_error: str | None = None
        self.build_error_step: Step | None = None  # None: every build fails; else only that step's
        self.push_failures = 0

    def prepare(self) -> None:
        return None

    def engine(self) -> str:
        return "the fake engine (linux/amd64)"

    def platform(self) -> Platform:
        return parse_platforms("linux/amd64")[0]

    def image_platform(self, reference: str) -> Platform:
        return self.platform()

    def close(self) -> None:
        return None

    def build(
        self,
        context_dir: Path,
        tags: Sequence[str],
        *,
        labels: Mapping[str, str] | None = None,
        target: str | None = None,
        buildargs: Mapping[str, str] | None = None,
        on_output: OutputSink = _discard,
        step: Step = "build",
        platform: str | None = None,
        cache_from: Sequence[str] = (),
    ) -> str:
        if self.build_error is not None and self.build_error_step in (None, step):
            raise StepFailed(step, self.build_error)
        image_id = "sha256:" + new_sha("image")
        self.labels[image_id] = dict(labels or {})
        for tag in tags:
            self.images[tag] = image_id
        self.builds.append((list(tags), target))
        on_output(f"built {image_id}")
        return image_id

    def run_tests(
        self, image: str, command: str, *, timeout: float, on_output: OutputSink = _discard, name: str | None = None,
        platform: str | None = None,
    ) -> int:
        self.tests.append(command)
        on_output(f"tests exit {self.test_exit}")
        return self.test_exit

    def push(self, repository: str, tag: str, *, on_output: OutputSink = _discard) -> str | None:
        if self.push_failures > 0:
            self.push_failures -= 1
            raise StepFailed("push", "registry unreachable")
        image_id = self.images[f"{repository}:{tag}"]
        self.registry.tags[tag] = dict(self.labels[image_id])
        self.pushes.append(tag)
        return None

    def image_id(self, reference: str) -> str | None:
        return self.images.get(reference)

    def disk_state(self) -> EngineDiskState:
        return EngineDiskState()  # CI_DISK_BUDGET's policy has its own fake (tests/unit/test_disk_budget.py)

    def remove_container(self, container_id: str) -> bool:
        return False

    def remove_image(self, reference: str) -> bool:
        for name, image_id in list(self.images.items()):
            if reference in (name, image_id):
                del self.images[name]
                return True
        return False
