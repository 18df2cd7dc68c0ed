"""Commit statuses on GitHub: each run shows on its commit as ``pending``, then its outcome.

``status_for(run)`` is the policy (a pure function of the run); ``GitHubStatusApi`` is the one effect
(``POST {CI_GITHUB_API_URL}/repos/{owner}/{repo}/statuses/{sha}``); ``CommitStatusReporter`` sends
off the run's critical path, like ``shared.notify.Notifier`` sends email:

* ``report(run)`` returns at once. Statuses wait in a bounded map keyed by commit, so a commit whose
  state changed twice while GitHub was away sends only its latest state (GitHub shows the latest one
  per commit and context anyway), and the oldest commit is dropped when the map is full.
* One daemon thread posts them with tenacity back-off (exponential with jitter), honouring
  ``Retry-After`` and the rate-limit reset, at most ``max_attempts`` times within ``give_up_after``
  seconds per status; a status that gives up says so in one line with the reason.
* Whatever GitHub (or whatever answers at ``CI_GITHUB_API_URL``) does, one request ends within
  ``deadline`` seconds (connect, headers and body together: a server trickling bytes is cut) and
  reads at most ``BODY_LIMIT`` bytes of an answer's body.
* A failure is logged once per streak (when it starts, and once more when GitHub takes statuses
  again), never per attempt, and never changes the run: GitHub is a display, not a step.

States (docs/ci/commit-statuses.md says the same to users): queued and running are
``pending``; ``succeeded`` is ``success`` naming the version; a failed step is ``failure`` naming
the step; an unexpected error or an interrupted run is ``error``; a superseded run is ``success``
with a description saying why nothing was built (superseded by run N, already released as X): it
is not a failure, and a red cross on a commit nobody broke would send people looking for one.
"""

from __future__ import annotations

import json
import socket
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
from ci_agent.targets import RepoTarget
from shared.logs import redact
from shared.runstore import Run

State = Literal["pending", "success", "failure", "error"]
CONTEXT = "pi-cicd"
DESCRIPTION_LIMIT = 140  # GitHub refuses longer descriptions with a 422
USER_AGENT = "pi-cicd-ci-agent"
DEFAULT_WAIT: WaitBaseT = tenacity.wait_exponential_jitter(max=60)
BODY_LIMIT = 64 * 1024  # an error body is one short JSON message; more is never read
REQUEST_DEADLINE = 20.0  # seconds for one request: connect, headers and body together
MAX_ATTEMPTS = 5  # per status
GIVE_UP_AFTER = 300.0  # seconds per status, Retry-After waits included
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


class _Deadline:
    """Cuts one request at ``seconds``, whatever it is waiting for, by shutting its socket down.

    httpx's timeouts bound each read, not the request: a server sending a byte every few seconds
    never trips them. A timer shuts down the socket httpcore reports through the ``trace``
    extension (or the one it connects next, when the time is up before the connection is made).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        sock = info["return_value"].get_extra_info("socket")
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked reading it: it sees the end
    except OSError:
        pass  # closed already


class GitHubStatusApi:
    """``POST /repos/{owner}/{repo}/statuses/{sha}`` with a bearer token (never in a URL or a message).

    One request lasts at most ``deadline`` seconds and reads at most ``body_limit`` bytes of an answer.
    """

    def __init__(
        self, api_url: str, repo: str, token: SecretStr, *, timeout: float = 10.0,
        deadline: float = REQUEST_DEADLINE, body_limit: int = BODY_LIMIT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.repo = repo
        self.deadline = deadline
        self.body_limit = body_limit
        self._token = token
        self._inflight: _Deadline | None = None
        self._client = httpx.Client(
            timeout=timeout, transport=transport, follow_redirects=False,
            # A connection per request, so the deadline always sees the socket it has to cut; a few
            # statuses per run make keep-alive worth nothing.
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": USER_AGENT,
                # The body limit counts bytes on the wire: a compressed body could inflate past it.
                "Accept-Encoding": "identity",
            },
        )

    def __repr__(self) -> str:
        return f"GitHubStatusApi(api_url={self.api_url!r}, repo={self.repo!r})"

    def post(self, status: CommitStatus) -> None:
        url = f"{self.api_url}/repos/{self.repo}/statuses/{status.sha}"
        token = self._token.get_secret_value()
        deadline = _Deadline(self.deadline)
        self._inflight = deadline
        try:
            with deadline, self._client.stream(
                "POST", url, json=status.body(), headers={"Authorization": f"Bearer {token}"},
                extensions={"trace": deadline.trace},
            ) as response:
                if response.is_success:
                    return
                body = _read_capped(response, self.body_limit)
        except httpx.HTTPError as exc:
            if deadline.expired:
                raise self._too_slow() from None
            raise CommitStatusFailed(redact(f"cannot reach {self.api_url}: {type(exc).__name__}: {exc}", [token])) \
                from None
        finally:
            self._inflight = None
        if deadline.expired:  # a body without a length ends quietly when its socket is shut
            raise self._too_slow()
        code = response.status_code
        said = redact(_message(response, body), [token])
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

    def token_scopes(self, ref: str) -> str | None:
        """Read the statuses of ``ref`` with the token (``doctor``): the classic token's scopes (GitHub's
        ``X-OAuth-Scopes``, ``""`` for none), or None for a fine-grained or app token, which has permissions
        instead and no header naming them. A refusal raises ``CommitStatusFailed`` saying what to change."""
        url = f"{self.api_url}/repos/{self.repo}/commits/{ref}/statuses"
        token = self._token.get_secret_value()
        try:
            response = self._client.get(
                url, params={"per_page": "1"}, headers={"Authorization": f"Bearer {token}"}, timeout=self.deadline,
            )
        except httpx.HTTPError as exc:
            raise CommitStatusFailed(redact(f"cannot reach {self.api_url}: {type(exc).__name__}: {exc}", [token])) \
                from None
        if response.is_success:
            scopes = response.headers.get("x-oauth-scopes")
            return None if scopes is None else scopes.strip()
        said = redact(_message(response, response.content[: self.body_limit]), [token])
        where = f"GitHub ({self.api_url}) answered {response.status_code} for the statuses of {self.repo}@{ref}"
        if response.status_code == 401:
            raise CommitStatusFailed(f"{where}: {said}: CI_GITHUB_TOKEN is refused", permanent=True)
        if response.status_code in (403, 404):
            raise CommitStatusFailed(
                f"{where}: {said}: the token cannot read {self.repo} (or the repository or branch does not exist)",
                permanent=True,
            )
        raise CommitStatusFailed(f"{where}: {said}")

    def _too_slow(self) -> CommitStatusFailed:
        return CommitStatusFailed(
            f"{self.api_url} did not answer within {self.deadline:g}s (connect, headers and body together)"
        )

    def cancel(self) -> None:
        """Cut the request in flight, if any, now (the agent is stopping)."""
        inflight = self._inflight
        if inflight is not None:
            inflight.expire()

    def close(self) -> None:
        self.cancel()
        self._client.close()


def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of the body (one more read of the socket at most); the rest is never read."""
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk[: limit - len(body)]
        if len(body) >= limit:
            break
    return bytes(body)


def _message(response: httpx.Response, body: bytes) -> str:
    """GitHub's ``message``, else the start of the body, else the reason phrase."""
    if response.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
        return response.reason_phrase  # compressed although we asked for none: not inflated
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: a hostile body nested thousands deep
        data = None
    text = str(data.get("message")) if isinstance(data, dict) and data.get("message") else \
        body.decode("utf-8", "replace")
    return _short(text or response.reason_phrase)


class _Replaced(Exception):
    """A newer state of the commit arrived while the older one waited for a retry (or it was dropped)."""


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
        max_attempts: int = MAX_ATTEMPTS,
        give_up_after: float = GIVE_UP_AFTER,
        wait: WaitBaseT = DEFAULT_WAIT,
    ) -> None:
        self.api = api
        self.public_url = public_url
        self.max_pending = max_pending
        self.max_attempts = max_attempts
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
        cancel = getattr(self.api, "cancel", None)
        if callable(cancel):
            cancel()  # a request still waiting for a slow server is not worth waiting for
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
        with self._cond:
            status = self._pending.get(sha)
        if status is None:
            return
        retrying = tenacity.Retrying(
            stop=tenacity.stop_any(
                tenacity.stop_after_attempt(self.max_attempts),
                tenacity.stop_before_delay(self.give_up_after),  # counts the wait ahead (Retry-After too)
                _StopWhen(self._stop),
            ),
            wait=self._wait_before_retry,
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, CommitStatusFailed) and not e.permanent),
            sleep=self._sleep,
            before_sleep=lambda state: self._failed(sha, state.outcome.exception() if state.outcome else None),
            reraise=True,
        )
        try:
            retrying(self._post, status)
        except _Replaced:
            return  # the loop sends the newer state next, with attempts of its own
        except CommitStatusFailed as exc:
            self._failed(sha, exc)
            self._forget(status)  # a newer state of this commit is sent after the next run
            if exc.permanent or self._stop.is_set():  # the streak's warning says why; nothing to add
                self._log.debug("commit status of {} given up: {}", sha[:12], exc)
            else:
                self._log.warning("commit status of {} given up: {}; last answer: {}",
                                  sha[:12], self._bound_reached(retrying, exc), exc)
        except Exception as exc:
            self._forget(status)
            self._log.opt(exception=exc).error("commit status of {} not sent: unexpected error", sha[:12])

    def _bound_reached(self, retrying: tenacity.Retrying, exc: CommitStatusFailed) -> str:
        attempts = int(retrying.statistics.get("attempt_number", 1))
        seconds = float(retrying.statistics.get("delay_since_first_attempt", 0.0))
        tried = f"tried {attempts} time(s) in {seconds:.0f}s"
        if attempts >= self.max_attempts:
            return f"{tried}, the most a status gets"
        if exc.retry_after is not None:
            return f"{tried}; GitHub asks to wait {exc.retry_after:.0f}s more, past the {self.give_up_after:g}s " \
                   "a status is tried for"
        return f"{tried}; the next attempt would be past the {self.give_up_after:g}s a status is tried for"

    def _forget(self, status: CommitStatus) -> None:
        with self._cond:
            if self._pending.get(status.sha) is status:
                del self._pending[status.sha]  # else a newer state arrived meanwhile: the loop sends it next

    def _post(self, status: CommitStatus) -> None:
        with self._cond:
            if self._pending.get(status.sha) is not status:
                raise _Replaced
        if self._stop.is_set():  # close() cut the back-off short: no attempt after it
            raise CommitStatusFailed("the agent is stopping", permanent=True)
        assert self.api is not None  # noqa: S101 - report() queues nothing without an api
        self.api.post(status)
        self._forget(status)
        self._log.debug("commit {} is {} on GitHub: {}", status.sha[:12], status.state, status.description)
        if self._failing:
            self._failing = False
            self._log.info("GitHub takes commit statuses again")

    def _failed(self, sha: str, exc: BaseException | None) -> None:
        if not self._failing:
            self._failing = True
            self._log.warning(
                "commit status of {} not sent: {}; retrying with back-off (at most {} attempts in {:g}s per status), "
                "and saying so again only once GitHub takes statuses again (a run's outcome never depends on it)",
                sha[:12], exc, self.max_attempts, self.give_up_after,
            )

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # close() cuts a back-off short

    def _wait_before_retry(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = float(self._wait(state))
        if isinstance(exc, CommitStatusFailed) and exc.retry_after is not None:
            # Past the bound, stop_before_delay gives the status up now instead of waiting for nothing.
            return max(backoff, exc.retry_after + 1.0)
        return backoff


def reporter_from_settings(settings: CiSettings, target: RepoTarget) -> CommitStatusReporter:
    """A reporter for ``target`` over GitHub's API when it has a ``github_token``, else a no-op one (logged once)."""
    token = target.github_token
    where = f"[repos.{target.name}] " if target.from_file else ""
    if token is None or target.github_repo is None:
        logger.bind(agent="ci").info("{}commit statuses are off: {} is not set", where,
                                     "github_token" if target.from_file else "CI_GITHUB_TOKEN")
        return CommitStatusReporter(None)
    api = GitHubStatusApi(settings.ci_github_api_url, target.github_repo, token)
    logger.bind(agent="ci").info(
        "{}commit statuses on: {} via {} (context {}){}", where, target.github_repo, api.api_url, CONTEXT,
        f", linking {settings.ci_public_url}/runs/N" if settings.ci_public_url else "",
    )
    return CommitStatusReporter(
        api, public_url=settings.ci_public_url, secrets=[*settings.secret_values(), *target.secret_values()]
    )
