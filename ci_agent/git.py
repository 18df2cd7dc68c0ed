"""The checkout step's effect boundary: ``git`` run as a subprocess, never through a shell.

Every argument that comes from outside (a commit sha, a ref name) is validated before git runs:
shas must be 40 hex digits and refs must pass ``ci_agent.payload.check_ref_name`` (no component
starting with ``-``), and ``--`` / ``--end-of-options`` separate options from the rest anyway. The
repository URL comes from the settings, but it may carry credentials
(``https://user:token@github.com/...``), so it is never written to ``.git/config`` (fetches name the
URL directly) and every message shows it with the user info masked.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from loguru import logger

from ci_agent.errors import StepFailed
from ci_agent.payload import check_ref_name
from shared.private_files import make_private_dirs
from shared.versions import Commit

SHA = re.compile(r"[0-9a-f]{40}")
_SHORT_SHA = re.compile(r"[0-9a-f]{7,39}")
_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]+@")
_STDERR_TAIL = 1500


def is_sha(text: str) -> bool:
    return SHA.fullmatch(text) is not None


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``, for messages and logs."""
    return _USERINFO.sub("***@", url)


def strip_credentials(url: str) -> str:
    """``url`` without user info: what goes into the image's ``org.opencontainers.image.source`` label."""
    if "://" not in url:
        return url  # scp-like git@host:owner/repo: the user is not a secret
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _checked_sha(sha: str) -> str:
    if not is_sha(sha):
        raise StepFailed("checkout", f"refusing to use {sha[:60]!r} as a commit: a commit is 40 lowercase hex digits")
    return sha


def _checked_ref(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/tags/"):
        name = ref.removeprefix(prefix)
        if name != ref:
            break
    problem = check_ref_name(name)
    if problem is not None:
        raise StepFailed("checkout", f"refusing to use {ref[:60]!r} as a git ref: it {problem}")
    return ref


class GitRunner:
    """Runs ``git`` with argument lists, a time limit, and no terminal prompts.

    ``timeout`` bounds each git command (a fetch of a big repository over a slow link is the long one).
    """

    def __init__(self, *, timeout: float = 600.0, git: str = "git") -> None:
        self.timeout = timeout
        self.git = git

    def run(self, args: Sequence[str], *, cwd: Path | None = None, what: str = "git") -> str:
        """Run ``git ARGS`` and return its stdout; any failure is ``StepFailed("checkout", ...)``."""
        env = dict(os.environ)
        # Never wait for a password on a terminal nobody watches; never read the user's git config
        # helpers into a service's fetch.
        env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "", "LC_ALL": "C"})
        command = [self.git, *args]
        try:
            completed = subprocess.run(
                command, cwd=cwd, env=env, capture_output=True, text=True, errors="replace",
                timeout=self.timeout, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise StepFailed("checkout", f"{what} did not finish within {self.timeout:g}s") from exc
        except OSError as exc:
            raise StepFailed("checkout", f"cannot run {self.git!r}: {exc.strerror or exc}") from exc
        if completed.returncode != 0:
            stderr = redact_url(completed.stderr.strip())[-_STDERR_TAIL:]
            raise StepFailed("checkout", f"{what} failed (exit {completed.returncode}): {stderr}")
        return completed.stdout

    def _ensure_repository(self, workdir: Path) -> None:
        if not (workdir / ".git").is_dir():
            make_private_dirs(workdir)  # 0700: the checkout may be a private repository
            self.run(["init", "--quiet", "--", str(workdir)], what="git init")

    def _has_commit(self, workdir: Path, sha: str) -> bool:
        try:
            self.run(["cat-file", "-e", "--end-of-options", f"{sha}^{{commit}}"], cwd=workdir, what="git cat-file")
        except StepFailed:
            return False
        return True

    def fetch(self, repo_url: str, workdir: Path, refspecs: Sequence[str]) -> None:
        self._ensure_repository(workdir)
        self.run(
            ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", repo_url, *refspecs],
            cwd=workdir, what=f"git fetch from {redact_url(repo_url)}",
        )

    def checkout(self, repo_url: str, commit_sha: str, workdir: Path) -> None:
        """Make ``workdir`` hold exactly ``commit_sha`` of ``repo_url``, with no leftover files.

        ``workdir`` persists between runs, so a fetch only transfers what is new.
        """
        sha = _checked_sha(commit_sha)
        self._ensure_repository(workdir)
        if not self._has_commit(workdir, sha):
            try:
                self.fetch(repo_url, workdir, [sha])
            except StepFailed as exc:
                # Servers that refuse a want of a bare sha: fetch the branches and tags and look there.
                logger.debug("fetching {} by sha failed ({}); fetching all branches", sha, exc.message)
                self.fetch(
                    repo_url, workdir, ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"]
                )
            if not self._has_commit(workdir, sha):
                raise StepFailed("checkout", f"commit {sha} is not in {redact_url(repo_url)}")
        self.run(["checkout", "--quiet", "--force", "--detach", sha, "--"], cwd=workdir, what="git checkout")
        self.run(["clean", "-ffdxq"], cwd=workdir, what="git clean")
        head = self.run(["rev-parse", "--verify", "HEAD"], cwd=workdir, what="git rev-parse").strip()
        if head != sha:
            raise StepFailed("checkout", f"checked out {head}, expected {sha}")

    def commit_messages(self, workdir: Path, since_sha: str | None, until_sha: str) -> list[str]:
        """Messages of the commits after ``since_sha`` up to ``until_sha``, newest first."""
        return [commit.message for commit in self.commits(workdir, since_sha, until_sha)]

    def commits(self, workdir: Path, since_sha: str | None, until_sha: str) -> list[Commit]:
        """The commits after ``since_sha`` up to ``until_sha``, newest first, with their shas (a revert
        names the sha of the commit it reverts).

        When ``since_sha`` is unknown here or not an ancestor of ``until_sha`` (a force push, a
        release built from another branch), only ``until_sha``'s own message counts.
        """
        until = _checked_sha(until_sha)
        if since_sha is not None and is_sha(since_sha) and self._has_commit(workdir, since_sha):
            try:
                self.run(
                    ["merge-base", "--is-ancestor", since_sha, until], cwd=workdir, what="git merge-base"
                )
                revisions = [f"{since_sha}..{until}"]
            except StepFailed:
                revisions = ["-1", until]
        else:
            revisions = ["-1", until]
        output = self.run(["log", "--format=%x00%H%n%B", *revisions, "--"], cwd=workdir, what="git log")
        entries = (entry.partition("\n") for entry in output.split("\x00")[1:])
        return [Commit(sha, message.strip()) for sha, _, message in entries if message.strip()]

    def resolve(self, repo_url: str, ref: str) -> str:
        """The 40-hex commit of ``ref`` (branch, tag, ``refs/...`` name or full sha) in ``repo_url``.

        Annotated tags resolve to the commit they point at.
        """
        return self.lookup(repo_url, ref)[1]

    def lookup(self, repo_url: str, ref: str) -> tuple[str | None, str]:
        """``(full ref name, commit)`` for ``ref``; the name is ``None`` when ``ref`` is a sha."""
        ref = ref.strip()
        if is_sha(ref.lower()):
            return None, ref.lower()
        if _SHORT_SHA.fullmatch(ref):
            raise StepFailed("checkout", f"{ref!r} looks like an abbreviated commit; give all 40 hex digits")
        _checked_ref(ref)
        output = self.run(["ls-remote", "--", repo_url], what=f"git ls-remote {redact_url(repo_url)}")
        advertised: dict[str, str] = {}
        for line in output.splitlines():
            sha, _, name = line.partition("\t")
            advertised[name] = sha
        candidates = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        for name in candidates:
            # The peeled entry (^{}) of an annotated tag names the commit; prefer it.
            found = advertised.get(f"{name}^{{}}") or advertised.get(name)
            if found is not None and is_sha(found):
                return name, found
        raise StepFailed("checkout", f"no branch or tag {ref!r} in {redact_url(repo_url)}")
