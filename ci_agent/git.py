"""The checkout step's effect boundary: ``git`` run as a subprocess, never through a shell.

Every argument that comes from outside (a commit sha, a ref name) is validated before git runs:
shas must be 40 hex digits and refs must pass ``ci_agent.payload.check_ref_name`` (no component
starting with ``-``), and ``--`` / ``--end-of-options`` separate options from the rest anyway. The
repository URL comes from the settings, but it may carry credentials
(``https://user:token@github.com/...``), so it is never written to ``.git/config`` (fetches name the
URL directly) and every message shows it with the user info masked. Nor does it reach git's argv
(``/proc/PID/cmdline`` is readable by every local user): git is given the URL without the user info,
and the credentials travel in git's environment as an ``http.<url>.extraHeader`` (``GIT_CONFIG_COUNT``
/ ``GIT_CONFIG_KEY_n`` / ``GIT_CONFIG_VALUE_n``, git >= 2.31), as actions/checkout does.

The work folder persists between runs and the host test runner can write into its ``.git``, so every
git command runs with hooks and the fs monitor disabled (``-c core.hooksPath=/dev/null
-c core.fsmonitor=false``): a hook planted by one run's tests never runs in a later run.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from loguru import logger

from ci_agent.errors import StepFailed
from ci_agent.payload import check_ref_name
from shared.private_files import make_private_dirs
from shared.versions import Commit

SHA = re.compile(r"[0-9a-f]{40}")
_SHORT_SHA = re.compile(r"[0-9a-f]{7,39}")
_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]+@")
_STDERR_TAIL = 1500
# Given before every git subcommand: nothing in the persistent work folder's .git may run code.
SAFE_OPTIONS = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
# The commit fetched last, kept as a ref: a fetch offers the server only what refs reach ("have" lines;
# a detached HEAD is not offered), so without one every fetch of a sha received the whole history again,
# unpacked and hashed here (a 6 MB repository: 2.2 s and 0.26 s of CPU per run instead of 0.1 s and 0.02 s).
FETCHED_REF = "refs/pi-cicd/fetched"


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


def remote_access(url: str) -> tuple[str, dict[str, str]]:
    """``(url for git's argv, environment for git)``: an http(s) URL's password moves to the environment.

    ``https://user:token@host/o/r.git`` becomes ``https://host/o/r.git`` plus an
    ``Authorization: Basic`` header scoped to that URL; other URLs (ssh, file, no password) are kept.
    """
    if "://" not in url:
        return url, {}
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.password is None:
        return url, {}
    bare = strip_credentials(url)
    token = base64.b64encode(f"{unquote(parts.username or '')}:{unquote(parts.password)}".encode()).decode()
    env = {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.{bare}.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}",
    }
    return bare, env


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


# The checkout is the build context, and Docker copies its files' modes into the image: under the
# systemd unit's UMask=0027 (or a shell's 077) the files would be 0640/0600 and an app whose image
# runs as a non-root USER could not read its own code. Git writes them 0644/0755 whatever the agent's
# umask; the work folder's 0700 parents keep them private on the host.
CHECKOUT_UMASK = 0o022


class GitRunner:
    """Runs ``git`` with argument lists, a time limit, and no terminal prompts.

    ``timeout`` bounds each git command (a fetch of a big repository over a slow link is the long one).
    """

    def __init__(self, *, timeout: float = 600.0, git: str = "git") -> None:
        self.timeout = timeout
        self.git = git

    def run(
        self, args: Sequence[str], *, cwd: Path | None = None, what: str = "git", env: Mapping[str, str] | None = None
    ) -> str:
        """Run ``git ARGS`` and return its stdout; any failure is ``StepFailed("checkout", ...)``."""
        completed = self._run(args, cwd=cwd, what=what, env=env)
        if completed.returncode != 0:
            raise self._failed(what, completed)
        return completed.stdout

    def _run(
        self, args: Sequence[str], *, cwd: Path | None, what: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        environment = dict(os.environ)
        # Never wait for a password on a terminal nobody watches; never read the user's git config
        # helpers into a service's fetch.
        environment.update({"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "", "LC_ALL": "C"})
        environment.update(env or {})
        command = [self.git, *SAFE_OPTIONS, *args]
        try:
            return subprocess.run(
                command, cwd=cwd, env=environment, capture_output=True, text=True, errors="replace",
                timeout=self.timeout, check=False, umask=CHECKOUT_UMASK,
            )
        except subprocess.TimeoutExpired as exc:
            raise StepFailed("checkout", f"{what} did not finish within {self.timeout:g}s") from exc
        except OSError as exc:
            raise StepFailed("checkout", f"cannot run {self.git!r}: {exc.strerror or exc}") from exc

    @staticmethod
    def _failed(what: str, completed: subprocess.CompletedProcess[str]) -> StepFailed:
        stderr = redact_url(completed.stderr.strip())[-_STDERR_TAIL:]
        return StepFailed("checkout", f"{what} failed (exit {completed.returncode}): {stderr}")

    def _ensure_repository(self, workdir: Path) -> None:
        if not (workdir / ".git").is_dir():
            make_private_dirs(workdir)  # 0700: the checkout may be a private repository
            self.run(["init", "--quiet", "--", str(workdir)], what="git init")

    def has_commit(self, workdir: Path, sha: str) -> bool:
        """Whether ``sha`` names a commit (or a tag of one) already in ``workdir``."""
        return self._has_commit(workdir, _checked_sha(sha))

    def is_ancestor(self, workdir: Path, ancestor: str, descendant: str) -> bool:
        """Whether ``ancestor`` is ``descendant`` or one of its ancestors (both must be in ``workdir``)."""
        args = ["merge-base", "--is-ancestor", _checked_sha(ancestor), _checked_sha(descendant)]
        completed = self._run(args, cwd=workdir, what="git merge-base")
        if completed.returncode not in (0, 1):
            raise self._failed("git merge-base", completed)
        return completed.returncode == 0

    def _has_commit(self, workdir: Path, sha: str) -> bool:
        return self._commit_of(workdir, sha) is not None

    def _commit_of(self, workdir: Path, sha: str) -> str | None:
        """The commit ``sha`` names (itself, or the one an annotated tag object tags), if ``workdir`` has it."""
        completed = self._run(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{sha}^{{commit}}"], cwd=workdir,
            what="git rev-parse",
        )
        commit = completed.stdout.strip()
        return commit if completed.returncode == 0 and is_sha(commit) else None

    def fetch(self, repo_url: str, workdir: Path, refspecs: Sequence[str]) -> None:
        self._ensure_repository(workdir)
        url, env = remote_access(repo_url)
        self.run(
            ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", url, *refspecs],
            cwd=workdir, what=f"git fetch from {redact_url(repo_url)}", env=env,
        )

    def ensure_commit(self, repo_url: str, workdir: Path, sha: str) -> bool:
        """Fetch ``sha`` (a commit or an annotated tag) unless ``workdir`` has it; whether it is there now."""
        return self._fetched_commit(repo_url, workdir, _checked_sha(sha)) is not None

    def _fetched_commit(self, repo_url: str, workdir: Path, sha: str) -> str | None:
        """The commit ``sha`` names, fetched first unless ``workdir`` has it; ``None`` if the remote lacks it."""
        self._ensure_repository(workdir)
        commit = self._commit_of(workdir, sha)
        if commit is not None:
            return commit
        try:
            self.fetch(repo_url, workdir, [f"+{sha}:{FETCHED_REF}"])
        except StepFailed as exc:
            # Servers that refuse a want of a bare sha: fetch the branches and tags and look there.
            logger.debug("fetching {} by sha failed ({}); fetching all branches", sha, exc.message)
            self.fetch(repo_url, workdir, ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"])
        return self._commit_of(workdir, sha)

    def checkout(self, repo_url: str, commit_sha: str, workdir: Path) -> str:
        """Make ``workdir`` hold exactly ``commit_sha`` of ``repo_url``, with no leftover files; returns the commit.

        ``commit_sha`` may name an annotated tag object (GitHub sends the tag object's sha in ``after``
        for an annotated tag push): it is peeled, and the commit it tags is checked out and returned.
        ``workdir`` persists between runs, so a fetch only transfers what is new.
        """
        sha = _checked_sha(commit_sha)
        commit = self._fetched_commit(repo_url, workdir, sha)
        if commit is None:
            raise StepFailed("checkout", f"commit {sha} is not in {redact_url(repo_url)}")
        # A detached checkout of a full commit id that exits 0 leaves HEAD at exactly that commit.
        self.run(["checkout", "--quiet", "--force", "--detach", commit, "--"], cwd=workdir, what="git checkout")
        self.run(["clean", "-ffdxq"], cwd=workdir, what="git clean")
        return commit

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
        revisions = ["-1", until]
        # merge-base answers 1 for "not an ancestor" and 128 for a commit it does not know: both mean -1.
        if since_sha is not None and is_sha(since_sha):
            completed = self._run(["merge-base", "--is-ancestor", since_sha, until], cwd=workdir, what="git merge-base")
            if completed.returncode == 0:
                revisions = [f"{since_sha}..{until}"]
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
        candidates = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        found = self._remote_commits(repo_url, candidates)  # one round trip for both
        for name in candidates:
            if name in found:
                return name, found[name]
        raise StepFailed("checkout", f"no branch or tag {ref!r} in {redact_url(repo_url)}")

    def remote_commit(self, repo_url: str, ref: str) -> str | None:
        """The commit ``ref`` (a full ``refs/...`` name) points at in ``repo_url`` now; ``None`` if it does not exist.

        Annotated tags resolve to the commit they point at.
        """
        _checked_ref(ref)
        return self._remote_commits(repo_url, [ref]).get(ref)

    def _remote_commits(self, repo_url: str, refs: Sequence[str]) -> dict[str, str]:
        """``ref -> commit`` for those of ``refs`` (full names, checked) that exist in ``repo_url``."""
        url, env = remote_access(repo_url)
        # The patterns keep the answer small; they match by suffix, so the exact names are looked up below.
        patterns = [pattern for ref in refs for pattern in (ref, f"{ref}^{{}}")]
        output = self.run(["ls-remote", "--", url, *patterns], what=f"git ls-remote {redact_url(repo_url)}", env=env)
        advertised: dict[str, str] = {}
        for line in output.splitlines():
            sha, _, name = line.partition("\t")
            advertised[name] = sha
        found: dict[str, str] = {}
        for ref in refs:
            # The peeled entry (^{}) of an annotated tag names the commit; prefer it.
            commit = advertised.get(f"{ref}^{{}}") or advertised.get(ref)
            if commit is not None and is_sha(commit):
                found[ref] = commit
        return found
