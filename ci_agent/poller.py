"""Polling the repository (``CI_POLL_INTERVAL``): CI for a Pi that GitHub's webhooks cannot reach.

Every interval one ``git ls-remote`` (one small request) lists the tracked branch's head and the
``vX.Y.Z`` tags; what moved is handed to the same ``RunQueue.accept`` a webhook delivery uses, so
coalescing, versioning and replay protection (``ci_agent/release_guard.py``) are the webhook's.
A run queued here has ``details["source"] == "poll"``.

Rules:

- **Seen refs** live in ``STATE_DIR/poll-refs.json`` (``{"refs": {"refs/heads/main": sha, ...}}``),
  written after each poll that changed them, so a restart does not queue again what was seen; a poll
  that finds nothing new writes nothing (and logs only at DEBUG).
- **First poll** (no state file): the tags that exist are remembered, not run (a repository with
  fifty releases does not queue fifty runs). The branch head is queued unless this agent has a run
  of that commit already: an already released head is then stopped by the release guard (it ends
  ``superseded``, releasing nothing) or, when this agent released it, by the queue itself.
- **Later polls**: a branch head that differs from the one seen is queued; a release tag that is
  new or points elsewhere is queued; a deleted tag is forgotten. Other tags are ignored. Of several
  such tags in one poll only the highest version is queued, the others remembered (one log line):
  a push of sixty tags is one release, not sixty (GitHub sends no webhook for it at all).
- **Webhook and polling together**: a ref at a commit for which this agent already has a run (from
  a webhook delivery, whatever its status) is only remembered, so a commit seen by both runs once.
  When the poll comes first and the delivery later, the queue makes the delivery a duplicate of a
  released run, or lets it supersede the queued one (same commit); only when it arrives while the
  polled run is running does a second run start, and the release guard stops it (``superseded``).
- **Failures** (remote unreachable, refused, hanging past the time limit) back off exponentially
  with jitter, from the interval up to ``MAX_BACKOFF``; a streak of failures logs one warning when
  it starts (and sends one email when a notifier is configured) and one info line when polling
  works again. Nothing changes in the seen refs during a streak, so nothing is lost.

Effects sit behind small interfaces (``RefSource``, ``Clock``, ``RunLookup``) so the rules above are
unit-tested with fakes; ``GitRefSource`` is the real ``git ls-remote``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import tenacity
from loguru import logger

from ci_agent.errors import CiError
from ci_agent.git import SAFE_OPTIONS, SHA, redact_url, remote_access
from ci_agent.payload import ZERO_SHA, PushEvent
from ci_agent.queue import KIND, RunQueue, Submission
from ci_agent.settings import POLL_MIN_INTERVAL
from ci_agent.targets import RepoTarget
from shared.errors import PiCicdError
from shared.notify import Email, Notifier
from shared.runstore import RunStore

SOURCE = "poll"
MAX_BACKOFF = 900.0
STATE_FILE = "poll-refs.json"
# Repository name stored in a polled run's event when CI_GITHUB_REPO is not set: the stored event
# is re-validated as a push payload, which needs an owner/name.
_FALLBACK_REPOSITORY = "local/repository"
_RELEASE_TAG = re.compile(r"refs/tags/v(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)")
_REPO_NAME = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]{0,38})/([A-Za-z0-9._-]{1,100}?)(?:\.git)?/?$")
_STDERR_TAIL = 500
_RECENT_RUNS = 200


class PollFailed(CiError):
    """Asking the remote for its refs failed; the poller backs off and asks again."""


@dataclass(frozen=True)
class RemoteRef:
    """One ref as the remote advertises it: ``sha`` (a commit or an annotated tag object) and the commit."""

    sha: str
    commit: str


class RefSource(Protocol):
    def refs(self) -> dict[str, RemoteRef]:
        """The tracked branch and the ``refs/tags/v*`` tags; ``PollFailed`` when the remote does not answer."""
        ...


class RunLookup(Protocol):
    def has_run(self, ref: str, shas: set[str]) -> bool:
        """Whether this agent has a run (any status) of ``ref`` at one of ``shas``."""
        ...


class Submit(Protocol):
    def __call__(self, event: PushEvent, delivery_id: str | None = None, *, source: str | None = None) -> Submission:
        ...


class Clock(Protocol):
    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; ``True`` when the poller was told to stop meanwhile."""
        ...


class StopClock:
    """The real clock: ``wait`` is an ``Event.wait``, so ``stop`` interrupts it at once."""

    def __init__(self) -> None:
        self.stopped = threading.Event()

    def wait(self, seconds: float) -> bool:
        return self.stopped.wait(seconds)


class StoreRuns:
    """``RunLookup`` over the run store: the most recent CI runs are enough (a ref moves forward)."""

    def __init__(self, store: RunStore, scope: str | None = None) -> None:
        self.store = store
        self.scope = scope  # the repository polled: another repository's runs of the same commit don't count

    def has_run(self, ref: str, shas: set[str]) -> bool:
        runs = self.store.list(limit=_RECENT_RUNS, kind=KIND, scope=self.scope)
        return any(run.ref == ref and run.commit in shas for run in runs)


class GitRefSource:
    """``git ls-remote`` of the branch and the ``v*`` tags, bounded by ``timeout`` seconds.

    The URL's credentials travel in git's environment (``ci_agent.git.remote_access``), never in argv.
    git runs in its own process group, killed whole on timeout: the http helper git starts would
    otherwise keep the output pipes open and the wait would not end.
    """

    def __init__(self, repo_url: str, branch: str, *, timeout: float, git: str = "git") -> None:
        self.repo_url = repo_url
        self.branch_ref = f"refs/heads/{branch}"
        self.timeout = timeout
        self.git = git
        self._running: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._cancelled = False

    def cancel(self) -> None:
        """Kill the ``git ls-remote`` in flight, if any, and refuse new ones (the agent is stopping).

        git runs in a session of its own, so without this it would outlive the agent while a remote hangs.
        """
        with self._lock:
            self._cancelled = True
            if self._running is not None:
                _kill_group(self._running, wait=False)

    def refs(self) -> dict[str, RemoteRef]:
        url, env = remote_access(self.repo_url)
        environment = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "", "LC_ALL": "C",
                       **env}
        command = [self.git, *SAFE_OPTIONS, "ls-remote", "--", url, self.branch_ref, "refs/tags/v*"]
        where = redact_url(self.repo_url)
        with self._lock:
            if self._cancelled:
                raise PollFailed("the agent is stopping")
            try:
                process = subprocess.Popen(
                    command, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True,
                )
            except OSError as exc:
                raise PollFailed(f"cannot run {self.git!r}: {exc.strerror or exc}") from exc
            self._running = process
        try:
            stdout, stderr = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(process)
            raise PollFailed(f"git ls-remote {where} did not answer within {self.timeout:g}s") from exc
        finally:
            with self._lock:
                self._running = None
        if self._cancelled:
            raise PollFailed("the agent is stopping")
        if process.returncode != 0:
            tail = redact_url(stderr.strip())[-_STDERR_TAIL:]
            raise PollFailed(f"git ls-remote {where} failed (exit {process.returncode}): {tail}")
        return parse_ls_remote(stdout)


def _kill_group(process: subprocess.Popen[str], *, wait: bool = True) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        process.kill()
    if wait:
        process.communicate()


def parse_ls_remote(output: str) -> dict[str, RemoteRef]:
    """``git ls-remote`` lines -> ``{ref: RemoteRef}``; an annotated tag's ``^{}`` line gives its commit."""
    advertised: dict[str, str] = {}
    for line in output.splitlines():
        sha, _, name = line.strip().partition("\t")
        if SHA.fullmatch(sha) and name:
            advertised[name] = sha
    refs: dict[str, RemoteRef] = {}
    for name, sha in advertised.items():
        if name.endswith("^{}"):
            continue
        refs[name] = RemoteRef(sha, advertised.get(f"{name}^{{}}", sha))
    return refs


def _tag_version(name: str) -> tuple[int, ...]:
    """``refs/tags/v1.10.0`` -> ``(1, 10, 0)``: release tags compare as versions, not as text."""
    return tuple(int(part) for part in _short_tag(name).removeprefix("v").split("."))


def _short_tag(name: str) -> str:
    return name.removeprefix("refs/tags/")


def _tag_range(names: list[str]) -> str:
    """Sorted tag refs as the log shows them: all of a few, else the lowest and the highest."""
    if len(names) <= 3:
        return ", ".join(_short_tag(name) for name in names)
    return f"{_short_tag(names[0])} … {_short_tag(names[-1])}"


def repository_name(github_repo: str | None, repo_url: str) -> str:
    """The ``owner/name`` a polled run's event carries: ``CI_GITHUB_REPO``, else the URL's last two parts."""
    if github_repo:
        return github_repo
    match = _REPO_NAME.search(repo_url.replace(":", "/"))
    return f"{match.group(1)}/{match.group(2)}" if match else _FALLBACK_REPOSITORY


class SeenRefs:
    """The refs the poller has seen, in ``STATE_DIR/poll-refs.json``; ``None`` before the first poll."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, str] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # A damaged file must not stop CI: start over as on a first poll (tags remembered, not run).
            log = logger.bind(agent="ci", component="poller")
            log.warning("{} is unreadable ({}); starting afresh", self.path, exc)
            return None
        refs = data.get("refs") if isinstance(data, dict) else None
        if not isinstance(refs, dict):
            return None
        return {str(name): str(sha) for name, sha in refs.items() if isinstance(sha, str)}

    def save(self, refs: Mapping[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".poll-refs.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"refs": dict(sorted(refs.items()))}, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def backoff_wait(interval: float, cap: float = MAX_BACKOFF) -> Callable[[int], float]:
    """Seconds to wait after the ``n``-th failure in a row: exponential from ``interval``, jittered, capped."""
    # Jitter in proportion to the interval, so agents that failed together do not retry together.
    strategy = tenacity.wait_exponential(multiplier=interval, max=cap) + tenacity.wait_random(0, interval / 4)

    def wait(failures: int) -> float:
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = failures
        return min(max(float(strategy(state)), interval), cap)

    return wait


class Poller:
    """Ask ``source`` for the refs every ``interval`` seconds and queue a run for each that moved."""

    def __init__(
        self,
        source: RefSource,
        submit: Submit,
        runs: RunLookup,
        seen: SeenRefs,
        *,
        branch: str,
        repository: str,
        interval: float,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        backoff: Callable[[int], float] | None = None,
        name: str | None = None,
    ) -> None:
        self.source = source
        # The repository's name in a repos file: its emails and log lines say which one is failing.
        self.name = name
        self.submit = submit
        self.runs = runs
        self.seen = seen
        self.branch = branch
        self.branch_ref = f"refs/heads/{branch}"
        self.repository = repository
        self.interval = interval
        self.clock = clock if clock is not None else StopClock()
        self.notifier = notifier
        self.backoff = backoff if backoff is not None else backoff_wait(interval)
        self.failures = 0
        self._thread: threading.Thread | None = None
        self._log = logger.bind(agent="ci", component="poller", **({"scope": name} if name else {}))

    def poll_once(self) -> list[int]:
        """One poll: the numbers of the runs it queued. ``PollFailed`` when the remote did not answer."""
        remote = self.source.refs()
        known = self.seen.load()
        first = known is None
        seen = dict(known or {})
        queued: list[int] = []
        relevant = {name: ref for name, ref in remote.items()
                    if name == self.branch_ref or _RELEASE_TAG.fullmatch(name)}
        new_tags: dict[str, RemoteRef] = {}
        for name, ref in sorted(relevant.items(), key=lambda item: item[0] != self.branch_ref):
            if seen.get(name) == ref.sha:
                continue
            is_tag = name != self.branch_ref
            if (first and is_tag) or self.runs.has_run(name, {ref.sha, ref.commit}):
                seen[name] = ref.sha
            elif is_tag:
                new_tags[name] = ref
            else:
                self._queue(name, ref, seen, queued)
        if new_tags:
            # Many tags in one push would queue a release each (GitHub sends no webhook at all for a push
            # of more than three tags): the highest stands for them all, the others are only remembered.
            highest = max(new_tags, key=_tag_version)
            skipped = sorted((name for name in new_tags if name != highest), key=_tag_version)
            if skipped:
                self._log.info("poll: {} new release tags at once; releasing only the highest, {}; {} skipped ({})",
                               len(new_tags), _short_tag(highest), len(skipped), _tag_range(skipped))
            for name in skipped:
                seen[name] = new_tags[name].sha
            self._queue(highest, new_tags[highest], seen, queued)
        for name in [name for name in seen if name.startswith("refs/tags/") and name not in relevant]:
            del seen[name]
        if first or seen != known:
            self.seen.save(seen)
        elif not queued:
            # Nothing written when nothing moved: an idle poll costs an SD card nothing (bench.idle_writes).
            self._log.debug("poll: nothing moved")
        return queued

    def _queue(self, name: str, ref: RemoteRef, seen: dict[str, str], queued: list[int]) -> None:
        submission = self.submit(self._event(name, ref, seen.get(name)), None, source=SOURCE)
        if not submission.duplicate:
            queued.append(submission.run.number)
            self._log.info("poll: {} is at {}; run {} queued", name, ref.commit[:12], submission.run.number)
        seen[name] = ref.sha

    def _event(self, name: str, ref: RemoteRef, before: str | None) -> PushEvent:
        is_tag = name != self.branch_ref
        return PushEvent(
            ref=name, branch=None if is_tag else self.branch, tag=name.removeprefix("refs/tags/") if is_tag else None,
            after=ref.commit, before=before if before is not None and SHA.fullmatch(before) else ZERO_SHA,
            deleted=False, repository=self.repository, pusher="ci-agent poll",
        )

    def step(self) -> float:
        """Poll once, handling failure; the seconds to wait before the next poll."""
        try:
            self.poll_once()
        except Exception as exc:
            # Anything, not only PollFailed (a store error, a full disk for the state file): the poller
            # is a daemon thread, and a dead one would stop CI silently.
            if isinstance(self.clock, StopClock) and self.clock.stopped.is_set():
                return 0.0  # the agent is stopping: not a failure of the remote
            if not isinstance(exc, PiCicdError | OSError):
                self._log.opt(exception=exc).debug("unexpected error while polling")
            self.failures += 1
            if self.failures == 1:
                self._log.warning("polling the repository failed: {}; retrying with backoff (reported once)", exc)
                self._email(f"polling the repository failed: {exc}")
            else:
                self._log.debug("polling failed again ({} in a row): {}", self.failures, exc)
            return self.backoff(self.failures)
        if self.failures:
            self._log.info("polling the repository works again after {} failed attempt(s)", self.failures)
            self.failures = 0
        return self.interval

    def _email(self, message: str) -> None:
        if self.notifier is None or not self.notifier.enabled:
            return
        self.notifier.notify(Email(
            subject=f"[{self.name or 'pi-cicd'}] polling the repository is failing",
            body=f"{message}\n\nThe CI agent keeps trying with backoff and logs when it works again.\n",
        ))

    def run(self) -> None:
        """Poll until the clock says stop."""
        while True:
            delay = self.step()
            if self.clock.wait(delay):
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"ci-poller-{self.name or ''}".rstrip("-"), daemon=True)
        self._thread.start()
        self._log.info("polling {} and release tags every {:g}s", self.branch_ref, self.interval)

    def stop(self, timeout: float | None = None) -> None:
        if isinstance(self.clock, StopClock):
            self.clock.stopped.set()
        cancel = getattr(self.source, "cancel", None)
        if callable(cancel):
            cancel()
        if self._thread is not None:
            self._thread.join(timeout)



def poller_for(target: RepoTarget, store: RunStore, queue: RunQueue, notifier: Notifier | None) -> Poller:
    """The poller ``ci-agent serve`` runs for a repository with a ``poll_interval`` (``CI_POLL_INTERVAL``)."""
    interval = target.poll_interval or POLL_MIN_INTERVAL
    # A poll that takes longer than the interval is a hanging remote: give up and back off.
    timeout = max(POLL_MIN_INTERVAL, min(interval, 60.0))
    return Poller(
        GitRefSource(target.repo_url, target.branch, timeout=timeout),
        functools.partial(queue.accept, scope=target.name),
        StoreRuns(store, target.name),
        SeenRefs(target.paths.poll_refs_file),
        branch=target.branch,
        repository=repository_name(target.github_repo, target.repo_url),
        interval=interval,
        notifier=notifier,
        name=target.name if target.from_file else None,
    )
