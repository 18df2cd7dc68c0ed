"""Replay safety: after checkout and before the tests, decide whether a run may release its commit.

Anyone who has seen one signed delivery can send its body again under a new ``X-GitHub-Delivery``
id (the id is not signed). The commit in a replayed body is always a real one, so what protects a
release is not the delivery but the repository and the registry as they are *now*:

* **tag push** ``vX.Y.Z``: the tag must still point at this commit in the repository (``git
  ls-remote``); if ``X.Y.Z`` already exists in the registry built from this very commit, the push
  was released already. Otherwise the run releases exactly ``X.Y.Z`` (an explicit release may be a
  back-port, or re-label a commit released before under another version: the user asked for it).
* **branch push**: the commit must still be reachable from the branch's current head (a force push
  replaced it otherwise); a queued push of the same branch whose commit descends from this one
  supersedes this run (coalescing by ancestry, not by arrival: ``ci_agent/queue.py``); a commit
  that some release's image names in ``org.opencontainers.image.revision`` is already released;
  a commit that is an ancestor of the highest release's commit is older than that release, and
  releasing it would roll ``latest`` back.

A run stopped here ends ``superseded`` (never ``failed``: no email, and the status badge ignores
it) with ``details["reason"]``, plus ``details["already_released"]`` (the tag) or
``details["superseded_by"]`` (the run) when one applies.

The revision of each release is read from its image's labels once and kept in
``STATE_DIR/release-revisions.json`` (tags are never overwritten, so it never goes stale); a run
reads at most ``RELEASE_SCAN`` releases, the highest first. A few are enough: an older release's
commit that is still on the branch is an ancestor of the latest release's commit, and one that is
not is unreachable; both are refused without its label. Keeping the scan short matters on Docker
Hub, where every manifest read counts as a pull.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from ci_agent.effects import ReleaseRegistry, Source
from ci_agent.errors import StepFailed
from ci_agent.git import is_sha
from ci_agent.payload import PushEvent
from shared.errors import RegistryError, RegistryNotFound
from shared.runstore import Run, RunStore
from shared.versions import parse_version

if TYPE_CHECKING:
    import loguru

REVISION_LABEL = "org.opencontainers.image.revision"
RELEASE_SCAN = 10
_QUEUED_SCAN_LIMIT = 10_000


@dataclass(frozen=True)
class Verdict:
    """Why a run releases nothing: ``reason`` for people, the rest for the run's JSON."""

    reason: str
    already_released: str | None = None
    superseded_by: int | None = None


class RunSkipped(Exception):
    """The release guard stopped the run; ``execute`` records ``verdict`` and sends no email."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


class RevisionCache:
    """``tag -> commit`` of the releases, in a JSON file; a tag without the label maps to ``""``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._revisions: dict[str, str] | None = None

    def get(self, tag: str) -> str | None:
        return self._load().get(tag)

    def put(self, found: dict[str, str]) -> None:
        if not found:
            return
        revisions = self._load()
        revisions.update(found)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".release-revisions.")
        try:
            with os.fdopen(descriptor, "w") as handle:
                json.dump(revisions, handle, sort_keys=True)
            os.replace(temporary, self.path)
        except OSError as exc:
            Path(temporary).unlink(missing_ok=True)
            logger.warning("cannot keep the release revisions in {}: {}", self.path, exc)

    def _load(self) -> dict[str, str]:
        if self._revisions is None:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}  # missing or damaged: it is only a cache, the registry is the truth
            self._revisions = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        return self._revisions


class ReleaseGuard:
    """Decides, with the checkout in ``workdir``, whether a run may go on to test, build and push."""

    def __init__(
        self, *, repo_url: str, git: Source, registry: ReleaseRegistry, store: RunStore, workdir: Path,
        revisions: RevisionCache, on_superseded: Callable[[Run], None] = lambda _: None, scope: str | None = None,
    ) -> None:
        self.on_superseded = on_superseded
        # The repository whose queued runs this guard coalesces (another repository's main is not ours).
        self.scope = scope
        self.repo_url = repo_url
        self.git = git
        self.registry = registry
        self.store = store
        self.workdir = workdir
        self.revisions = revisions

    def check(
        self, run: Run, event: PushEvent, commit: str, log: loguru.Logger, *, remote_commit: str | None = None
    ) -> None:
        """Return when the run may release ``commit``; raise ``RunSkipped`` saying why not.

        ``remote_commit``: what ``event.ref`` pointed at in the repository a moment ago, when the caller
        has just asked (``ci-agent run`` looks its ref up to make the event); the guard then does not
        ask the remote again. A ref moving in between is no different from one moving right after it.
        """
        if event.tag is not None:
            self._check_tag(event, commit, log, remote_commit)
        elif event.branch is not None:
            self._check_branch(run, event, commit, log, remote_commit)
        else:
            # `ci-agent run --ref SHA`: a person named this commit; it still must not roll back.
            self._check_releases(commit, log)

    def _remote(self, ref: str, known: str | None) -> str | None:
        return known if known is not None else self.git.remote_commit(self.repo_url, ref)

    def _check_tag(self, event: PushEvent, commit: str, log: loguru.Logger, known: str | None) -> None:
        current = self._remote(event.ref, known)
        if current != commit:
            now = f"points at {current}" if current else "no longer exists"
            raise RunSkipped(Verdict(f"tag {event.tag} {now} in the repository, not at {commit}: nothing to release"))
        version = event.release_version
        if version is None:
            # Another tag (`ci-agent run --ref sometag`) gets the next version, like a branch: no rollback.
            self._check_releases(commit, log)
        else:
            # Every spelling of the version counts (`1.2.3`, and `v1.2.3` where tags are read so).
            wanted = parse_version(version)
            same = [tag for tag in self.registry.list_tags() if parse_version(tag) == wanted]
            for tag, revision in self._revisions(same).items():
                if revision == commit:
                    raise RunSkipped(Verdict(f"commit {commit} was already released as {tag}", already_released=tag))
        log.info("tag {} points at {}", event.tag, commit)

    def _check_branch(
        self, run: Run, event: PushEvent, commit: str, log: loguru.Logger, known: str | None
    ) -> None:
        head = self._remote(event.ref, known)
        if head is None:
            raise RunSkipped(Verdict(f"{event.ref} no longer exists in the repository: nothing to release"))
        if head != commit:  # the head itself was just checked out: nothing to fetch or compare then
            if not self.git.ensure_commit(self.repo_url, self.workdir, head):
                raise StepFailed("checkout", f"cannot fetch the head {head} of {event.ref}")
            if not self.git.is_ancestor(self.workdir, commit, head):
                raise RunSkipped(Verdict(
                    f"commit {commit} is no longer on {event.ref} (its head is {head}; a force push replaced it)"
                ))
        newer = self._coalesce(run, event, commit, head, log)
        if newer is not None:
            reason = f"queued run {newer.number} is for {newer.commit}, a newer commit of {event.ref}"
            raise RunSkipped(Verdict(reason, superseded_by=newer.number))
        self._check_releases(commit, log)
        log.info("commit {} is on {} (head {}) and not released yet", commit, event.ref, head)

    def _check_releases(self, commit: str, log: loguru.Logger) -> None:
        tags = self.registry.list_tags()
        revisions = self._revisions(tags)
        for tag, revision in revisions.items():
            if revision == commit:
                raise RunSkipped(Verdict(f"commit {commit} was already released as {tag}", already_released=tag))
        # The highest release (pre-releases aside), by the tag it was pushed as.
        latest = next((tag for tag in revisions if (v := parse_version(tag)) is not None and not v.prerelease), None)
        latest_commit = revisions.get(latest) if latest is not None else None
        if latest_commit and is_sha(latest_commit) and self._have(latest_commit, log):
            if self.git.is_ancestor(self.workdir, commit, latest_commit):
                raise RunSkipped(Verdict(
                    f"commit {commit} is older than release {latest} (built from {latest_commit}): "
                    "releasing it would roll back"
                ))

    def _have(self, sha: str, log: loguru.Logger) -> bool:
        try:
            if self.git.ensure_commit(self.repo_url, self.workdir, sha):
                return True
        except StepFailed as exc:
            log.warning("cannot fetch {}: {}", sha, exc.message)
        # A release built from a commit this repository no longer has (another branch, history
        # rewritten): ancestry cannot be told, and the commit was checked to be on the branch.
        log.warning("the latest release's commit {} is not in the repository; its ancestry is not checked", sha)
        return False

    def _coalesce(self, run: Run, event: PushEvent, commit: str, head: str, log: loguru.Logger) -> Run | None:
        """The queued run of this branch that supersedes ``run``, if any; older queued ones end superseded.

        Among this run and the queued runs of the branch whose commits are on the branch now, the
        keeper is the newest commit by ancestry (the latest arrival among equals). Every other one
        whose commit is an ancestor of the keeper's ends ``superseded`` by the keeper; a commit
        beside it (a merged side branch) keeps its run.
        """
        queued = [
            other for other in self.store.list(limit=_QUEUED_SCAN_LIMIT, status="queued", kind=run.kind,
                                               scope=self.scope)
            if other.ref == event.ref and other.number != run.number and other.commit and is_sha(other.commit)
        ]
        # A commit the branch's head does not contain is not fetched: its own run will find it unreachable.
        on_branch = [
            other for other in sorted(queued, key=lambda r: r.number)
            if self.git.has_commit(self.workdir, str(other.commit))
            and self.git.is_ancestor(self.workdir, str(other.commit), head)
        ]
        keeper: Run | None = None
        keeper_commit = commit
        for other in on_branch:
            if self.git.is_ancestor(self.workdir, keeper_commit, str(other.commit)):
                keeper, keeper_commit = other, str(other.commit)
        keeper_number = keeper.number if keeper is not None else run.number
        for other in on_branch:
            if other is keeper or not self.git.is_ancestor(self.workdir, str(other.commit), keeper_commit):
                continue
            reason = f"run {keeper_number} is for {keeper_commit}, the same or a newer commit of {event.ref}"
            if (done := self.store.supersede_run(other.number, by=keeper_number, reason=reason)) is not None:
                self.on_superseded(done)
                log.info("queued run {} ({}) superseded by run {}", other.number, other.commit, keeper_number)
        return keeper

    def release_revision(self, tag: str) -> str | None:
        """The commit release ``tag`` was built from, if this guard has read it already (else ``None``)."""
        return self.revisions.get(tag) or None

    def _revisions(self, tags: list[str]) -> dict[str, str]:
        """``tag -> commit`` for the ``RELEASE_SCAN`` highest version tags among ``tags``, highest first."""
        versions = sorted(
            ((version, tag) for tag in tags if (version := parse_version(tag)) is not None), reverse=True
        )[:RELEASE_SCAN]
        found: dict[str, str] = {}
        fresh: dict[str, str] = {}
        for _, tag in versions:
            revision = self.revisions.get(tag)
            if revision is None:
                try:
                    revision = self.registry.image_labels(tag).get(REVISION_LABEL, "")
                except RegistryNotFound:
                    continue  # deleted between the listing and now
                except RegistryError as exc:
                    raise StepFailed("checkout", f"cannot read the labels of release {tag}: {exc}") from exc
                fresh[tag] = revision
            found[tag] = revision
        self.revisions.put(fresh)
        return found
