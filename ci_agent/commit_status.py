"""Commit statuses on GitHub: each run shows on its commit as ``pending``, then its outcome.

``status_for(run)`` is the policy (a pure function of the run); ``GitHubStatusApi`` is the one effect
(``POST {CI_GITHUB_API_URL}/repos/{owner}/{repo}/statuses/{sha}``); ``CommitStatusReporter`` sends
off the run's critical path, like ``shared.notify.Notifier`` sends email:

* ``report(run)`` returns at once. Statuses wait in a bounded map keyed by commit, so a commit whose
  state changed twice while GitHub was away sends only its latest state (GitHub shows the latest one
  per commit and context anyway), and the oldest commit is dropped when the map is full.
* One daemon thread posts them with tenacity back-off (exponential with jitter), honouring
  ``Retry-After`` and the rate-limit reset, for at most ``give_up_after`` seconds per status.
* A failure is logged once per streak (when it starts, and once more when GitHub takes statuses
  again), never per attempt, and never changes the run: GitHub is a display, not a step.

States (the README's "Commit statuses on GitHub" says the same to users): queued and running are
``pending``; ``succeeded`` is ``success`` naming the version; a failed step is ``failure`` naming
the step; an unexpected error or an interrupted run is ``error``; a superseded run is ``success``
with a description saying why nothing was built (superseded by run N, already released as X): it
is not a failure, and a red cross on a commit nobody broke would send people looking for one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol

import httpx
import tenacity
from loguru import logger
from pydantic import SecretStr
from tenacity.wait import WaitBaseT

from ci_agent.errors import CommitStatusFailed
from ci_agent.settings import CiSettings
from shared.logs import redact
from shared.runstore import Run

State = Literal["pending", "success", "failure", "error"]
CONTEXT = "pi-cicd"
DESCRIPTION_LIMIT = 140  # GitHub refuses longer descriptions with a 422
USER_AGENT = "pi-cicd-ci-agent"
DEFAULT_WAIT: WaitBaseT = tenacity.wait_exponential_jitter(max=60)
_SHA_LENGTH = 40
_REMEMBERED = 4096  # commits whose newest run number is kept


@dataclass(frozen=True)
class CommitStatus:
    sha: str
    state: State
    description: str
    target_url: str | None = None
    context: str = CONTEXT

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"state": self.state, "description": self.description, "context": self.context}
        if self.target_url is not None:
            body["target_url"] = self.target_url
        return body


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 1] + "…"


def status_for(run: Run, public_url: str | None = None) -> CommitStatus | None:
    """The status ``run`` shows on its commit, or None when it has no commit id to show it on."""
    sha = (run.commit or "").lower()
    if len(sha) != _SHA_LENGTH or any(c not in "0123456789abcdef" for c in sha):
        return None
    n = run.number
    state: State
    if run.status == "queued":
        state, text = "pending", f"Run {n} queued"
    elif run.status == "running":
        state, text = "pending", f"Run {n} running"
    elif run.status == "succeeded":
        state, text = "success", f"Run {n} released {run.version}" if run.version else f"Run {n} succeeded"
    elif run.status == "failed":
        error = run.error or "no reason recorded"
        if run.failed_step and not error.startswith("unexpected error"):
            state, text = "failure", f"Run {n} failed at step {run.failed_step}: {error}"
        else:
            where = f" at step {run.failed_step}" if run.failed_step else ""
            state, text = "error", f"Run {n} broke with an internal error{where}: {error}"
    elif run.status == "superseded":
        state = "success"
        released, by = run.details.get("already_released"), run.details.get("superseded_by")
        if released:
            text = f"Run {n} built nothing: already released as {released}"
        elif by is not None:
            text = f"Run {n} built nothing: superseded by run {by}"
        else:
            text = f"Run {n} built nothing: {run.details.get('reason') or 'superseded'}"
    else:  # interrupted
        state, text = "error", f"Run {n} was interrupted: the agent stopped during the run"
    target = f"{public_url.rstrip('/')}/runs/{n}" if public_url else None
    return CommitStatus(sha=sha, state=state, description=_short(text), target_url=target)


class StatusApi(Protocol):
    def post(self, status: CommitStatus) -> None:
        """Create ``status`` on GitHub or raise ``CommitStatusFailed``."""

    def close(self) -> None: ...


def _retry_after(response: httpx.Response, now: Callable[[], float] = time.time) -> float | None:
    """Seconds GitHub asks us to wait: ``Retry-After`` (seconds or a date), else the rate-limit reset."""
    value = response.headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - now())
            except (TypeError, ValueError):
                pass
    if response.headers.get("x-ratelimit-remaining") == "0":
        try:
            return max(0.0, float(response.headers.get("x-ratelimit-reset", "")) - now())
        except ValueError:
            return None
    return None


class GitHubStatusApi:
    """``POST /repos/{owner}/{repo}/statuses/{sha}`` with a bearer token (never in a URL or a message)."""

    def __init__(
        self, api_url: str, repo: str, token: SecretStr, *, timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.repo = repo
        self._token = token
        self._client = httpx.Client(
            timeout=timeout, transport=transport, follow_redirects=False,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": USER_AGENT,
            },
        )

    def __repr__(self) -> str:
        return f"GitHubStatusApi(api_url={self.api_url!r}, repo={self.repo!r})"

    def post(self, status: CommitStatus) -> None:
        url = f"{self.api_url}/repos/{self.repo}/statuses/{status.sha}"
        token = self._token.get_secret_value()
        try:
            response = self._client.post(url, json=status.body(), headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise CommitStatusFailed(redact(f"cannot reach {self.api_url}: {type(exc).__name__}: {exc}", [token])) \
                from None
        if response.is_success:
            return
        code = response.status_code
        said = redact(_message(response), [token])
        wait = _retry_after(response)
        where = f"GitHub ({self.api_url}) answered {code} for {self.repo}@{status.sha[:12]}"
        if code == 401:
            raise CommitStatusFailed(f"{where}: {said}: CI_GITHUB_TOKEN is refused", permanent=True)
        if code == 429 or (code == 403 and wait is not None):
            raise CommitStatusFailed(f"{where}: rate limited ({said})", retry_after=wait)
        if code in (403, 404):
            raise CommitStatusFailed(
                f"{where}: {said}: the token needs \"Commit statuses: write\" on {self.repo}", permanent=True
            )
        if 400 <= code < 500:
            raise CommitStatusFailed(f"{where}: {said}", permanent=True)
        raise CommitStatusFailed(f"{where}: {said}", retry_after=wait)

    def close(self) -> None:
        self._client.close()


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        data = None
    text = str(data.get("message")) if isinstance(data, dict) and data.get("message") else response.text
    return _short(text or response.reason_phrase)


class _StopWhen(tenacity.stop.stop_base):
    """Stop retrying once ``event`` is set (the agent is stopping)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.event.is_set()


class CommitStatusReporter:
    """Queues statuses and posts them on one background thread; ``api=None`` means statuses are off."""

    def __init__(
        self,
        api: StatusApi | None,
        *,
        public_url: str | None = None,
        secrets: Iterable[str] = (),
        max_pending: int = 256,
        give_up_after: float = 3600.0,
        wait: WaitBaseT = DEFAULT_WAIT,
    ) -> None:
        self.api = api
        self.public_url = public_url
        self.max_pending = max_pending
        self.give_up_after = give_up_after
        self._wait = wait
        self._secrets = tuple(s for s in secrets if s)
        self._pending: dict[str, CommitStatus] = {}
        self._newest: dict[str, int] = {}
        self._sending = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._log = logger.bind(agent="ci", component="commit-status")

    @property
    def enabled(self) -> bool:
        return self.api is not None

    def report(self, run: Run) -> None:
        """Queue the status ``run`` shows now and return at once; never raises."""
        if self.api is None:
            return
        try:
            status = status_for(run, self.public_url)
        except Exception as exc:  # a display must not break the run that asked for it
            self._log.opt(exception=exc).error("no commit status for run {}: {}", run.number, exc)
            return
        if status is None:
            return
        status = CommitStatus(status.sha, status.state, redact(status.description, self._secrets),
                              status.target_url, status.context)
        with self._cond:
            if self._stop.is_set():
                return
            # A commit shows its newest run: an older run of it ending later (superseded) must not hide it.
            if self._newest.get(status.sha, 0) > run.number:
                return
            self._newest.pop(status.sha, None)
            self._newest[status.sha] = run.number
            while len(self._newest) > _REMEMBERED:
                del self._newest[next(iter(self._newest))]
            self._pending.pop(status.sha, None)
            self._pending[status.sha] = status
            while len(self._pending) > self.max_pending:
                dropped = next(iter(self._pending))
                del self._pending[dropped]
                self._log.warning("commit status of {} dropped: {} statuses are waiting for GitHub already",
                                  dropped[:12], self.max_pending)
            self._start_worker()
            self._cond.notify_all()

    def flush(self, timeout: float = 30) -> bool:
        """Wait until every queued status was sent or given up; False if ``timeout`` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._sending, timeout=timeout)

    def close(self, timeout: float = 10) -> bool:
        """Flush (bounded), then stop the thread; what is still waiting is dropped with one line.

        While GitHub is failing there is no point in waiting: the stop is not delayed for it.
        """
        drained = self.flush(timeout) if self._thread is not None and not self._failing else not self._pending
        with self._cond:
            self._stop.set()
            left = len(self._pending)
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if left:
            self._log.warning("{} commit status(es) not sent: the agent is stopping", left)
        if self.api is not None:
            self.api.close()
        return drained

    def _start_worker(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="commit-status", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stop.is_set())
                if self._stop.is_set():
                    return
                sha = next(iter(self._pending))
                self._sending = True
            try:
                self._send(sha)
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()

    def _send(self, sha: str) -> None:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_any(tenacity.stop_after_delay(self.give_up_after), _StopWhen(self._stop)),
            wait=self._wait_before_retry,
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, CommitStatusFailed) and not e.permanent),
            sleep=self._sleep,
            before_sleep=lambda state: self._failed(sha, state.outcome.exception() if state.outcome else None),
            reraise=True,
        )
        try:
            retrying(self._post_latest, sha)
        except CommitStatusFailed as exc:
            self._failed(sha, exc)
            with self._cond:
                self._pending.pop(sha, None)  # given up: a newer state of this commit is sent after the next run
            self._log.debug("commit status of {} given up: {}", sha[:12], exc)
        except Exception as exc:
            with self._cond:
                self._pending.pop(sha, None)
            self._log.opt(exception=exc).error("commit status of {} not sent: unexpected error", sha[:12])

    def _post_latest(self, sha: str) -> None:
        with self._cond:
            status = self._pending.get(sha)
        if status is None:
            return
        if self._stop.is_set():  # close() cut the back-off short: no attempt after it
            raise CommitStatusFailed("the agent is stopping", permanent=True)
        assert self.api is not None  # noqa: S101 - report() queues nothing without an api
        self.api.post(status)
        with self._cond:
            if self._pending.get(sha) is status:
                del self._pending[sha]  # else a newer state arrived meanwhile: the loop sends it next
        self._log.debug("commit {} is {} on GitHub: {}", sha[:12], status.state, status.description)
        if self._failing:
            self._failing = False
            self._log.info("GitHub takes commit statuses again")

    def _failed(self, sha: str, exc: BaseException | None) -> None:
        if not self._failing:
            self._failing = True
            self._log.warning(
                "commit status of {} not sent: {}; retrying with back-off, and saying so again only once "
                "GitHub takes statuses again (a run's outcome never depends on it)", sha[:12], exc,
            )

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # close() cuts a back-off short

    def _wait_before_retry(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = float(self._wait(state))
        if isinstance(exc, CommitStatusFailed) and exc.retry_after is not None:
            return max(backoff, min(exc.retry_after + 1.0, self.give_up_after))
        return backoff


def reporter_from_settings(settings: CiSettings) -> CommitStatusReporter:
    """A reporter over GitHub's API when ``CI_GITHUB_TOKEN`` is set, else a no-op one (logged once)."""
    token = settings.ci_github_token
    if token is None or settings.ci_github_repo is None:
        logger.bind(agent="ci").info("commit statuses are off: CI_GITHUB_TOKEN is not set")
        return CommitStatusReporter(None)
    api = GitHubStatusApi(settings.ci_github_api_url, settings.ci_github_repo, token)
    logger.bind(agent="ci").info(
        "commit statuses on: {} via {} (context {}){}", settings.ci_github_repo, api.api_url, CONTEXT,
        f", linking {settings.ci_public_url}/runs/N" if settings.ci_public_url else "",
    )
    return CommitStatusReporter(api, public_url=settings.ci_public_url, secrets=settings.secret_values())
