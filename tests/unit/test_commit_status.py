"""Commit statuses: the run -> status policy, the reporter's queue and streak logging, the GitHub client
against tests/support/github_api.py (GitHub's documented answers), and the settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import tenacity
from pydantic import SecretStr

from ci_agent.commit_status import CommitStatus, CommitStatusReporter, GitHubStatusApi, status_for
from ci_agent.errors import CommitStatusFailed
from ci_agent.settings import CiSettings
from shared.errors import SettingsError
from shared.runstore import Run
from shared.settings import load_settings
from shared.testing import capture_logs
from tests.support.github_api import GitHubApi
from tests.support.polling import wait_for

SHA = "a" * 40
REPO = "Codertocat/Hello-World"
TOKEN = "github_pat_unit-Zx81-never-shown"
NO_WAIT = tenacity.wait_none()
BASE = {"CI_REPO_URL": "https://example.org/app.git", "CI_IMAGE": "registry.local/app", "CI_ALLOW_UNSIGNED": "true"}


def run(status: str, **fields: Any) -> Run:
    values: dict[str, Any] = {
        "number": 7, "status": status, "kind": "ci", "commit": SHA, "ref": "refs/heads/main", "version": None,
        "failed_step": None, "delivery_id": None, "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "started_at": None, "finished_at": None, "log_path": None, "error": None, "details": {},
    }
    values.update(fields)
    return Run(**values)


# -- the policy ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("the_run", "state", "words"),
    [
        (run("queued"), "pending", "queued"),
        (run("running"), "pending", "running"),
        (run("succeeded", version="1.4.0"), "success", "released 1.4.0"),
        (run("failed", failed_step="test", error="the test command `pytest` exited with code 1"), "failure",
         "failed at step test"),
        (run("failed", failed_step="build", error="unexpected error: KeyError: 'x'"), "error", "internal error"),
        (run("failed", error="internal error: RuntimeError: boom"), "error", "internal error"),
        (run("interrupted"), "error", "interrupted"),
        (run("superseded", details={"superseded_by": 9}), "success", "superseded by run 9"),
        (run("superseded", details={"already_released": "1.3.0", "superseded_by": 4}), "success",
         "already released as 1.3.0"),
    ],
)
def test_each_run_state_has_its_commit_status(the_run: Run, state: str, words: str) -> None:
    status = status_for(the_run)
    assert status is not None
    assert (status.state, status.context, status.sha) == (state, "pi-cicd", SHA)
    assert words in status.description
    assert status.target_url is None


def test_description_fits_githubs_limit_and_target_links_the_run() -> None:
    status = status_for(run("failed", failed_step="test", error="x" * 500), "https://ci.example.org/")
    assert status is not None
    assert len(status.description) == 140
    assert status.target_url == "https://ci.example.org/runs/7"


@pytest.mark.parametrize("commit", [None, "main", "a" * 39, "g" * 40])
def test_no_status_without_a_commit_id(commit: str | None) -> None:
    assert status_for(run("queued", commit=commit)) is None


# -- the reporter ----------------------------------------------------------------------------------


class FakeApi:
    """Fails the first ``failures`` posts with ``error``; records what it took."""

    def __init__(self, failures: int = 0, error: CommitStatusFailed | None = None) -> None:
        self.failures = failures
        self.error = error or CommitStatusFailed("GitHub answered 500")
        self.taken: list[CommitStatus] = []
        self.attempts = 0
        self.gate = threading.Event()
        self.gate.set()

    def post(self, status: CommitStatus) -> None:
        self.gate.wait(10)
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error
        self.taken.append(status)

    def close(self) -> None:
        pass


@pytest.fixture
def reporters() -> Iterator[list[CommitStatusReporter]]:
    made: list[CommitStatusReporter] = []
    yield made
    for reporter in made:
        reporter.close(timeout=5)


def test_transient_failures_are_retried_and_logged_once_per_streak(reporters: list[CommitStatusReporter]) -> None:
    api = FakeApi(failures=4)
    reporter = CommitStatusReporter(api, wait=NO_WAIT)
    reporters.append(reporter)
    with capture_logs("INFO") as logs:
        reporter.report(run("succeeded", version="1.0.0"))
        assert reporter.flush(10)
    assert [s.state for s in api.taken] == ["success"]
    assert api.attempts == 5
    warnings = [e for e in logs if e.level == "WARNING"]
    assert len(warnings) == 1, warnings
    assert any("takes commit statuses again" in e.message for e in logs)


def test_a_permanent_refusal_is_not_retried(reporters: list[CommitStatusReporter]) -> None:
    api = FakeApi(failures=10, error=CommitStatusFailed("401 Bad credentials", permanent=True))
    reporter = CommitStatusReporter(api, wait=NO_WAIT)
    reporters.append(reporter)
    with capture_logs("WARNING") as logs:
        reporter.report(run("queued"))
        reporter.report(run("succeeded", number=8, commit="b" * 40, version="1.0.0"))
        assert reporter.flush(10)
    assert api.attempts == 2 and api.taken == []
    assert len(logs) == 1 and "Bad credentials" in logs[0].message


def test_only_the_latest_state_of_a_commit_is_sent_after_an_outage(reporters: list[CommitStatusReporter]) -> None:
    api = FakeApi()
    api.gate.clear()
    reporter = CommitStatusReporter(api, wait=NO_WAIT)
    reporters.append(reporter)
    reporter.report(run("queued", number=1, commit="c" * 40))  # being sent while the gate is closed
    wait_for(lambda: reporter._sending, what="the first post under way")
    reporter.report(run("queued"))
    reporter.report(run("running"))
    reporter.report(run("succeeded", version="2.0.0"))
    api.gate.set()
    assert reporter.flush(10)
    assert [(s.sha[0], s.state) for s in api.taken] == [("c", "pending"), ("a", "success")]


def test_the_queue_is_bounded(reporters: list[CommitStatusReporter]) -> None:
    api = FakeApi()
    api.gate.clear()
    reporter = CommitStatusReporter(api, wait=NO_WAIT, max_pending=2)
    reporters.append(reporter)
    for number, letter in enumerate("0123", start=1):
        reporter.report(run("queued", number=number, commit=letter * 40))
        if number == 1:
            wait_for(lambda: reporter._sending, what="the first post under way")
    api.gate.set()
    assert reporter.flush(10)
    assert [s.sha[0] for s in api.taken] == ["0", "2", "3"]


def test_off_reporter_sends_nothing_and_starts_no_thread() -> None:
    reporter = CommitStatusReporter(None)
    reporter.report(run("queued"))
    assert reporter._thread is None and reporter.close(1)


def test_a_rate_limit_reset_is_waited_for(reporters: list[CommitStatusReporter]) -> None:
    api = FakeApi(failures=1, error=CommitStatusFailed("rate limited", retry_after=30))
    reporter = CommitStatusReporter(api, wait=NO_WAIT)
    reporters.append(reporter)
    slept: list[float] = []
    reporter._sleep = slept.append  # type: ignore[method-assign,assignment]
    reporter.report(run("queued"))
    assert reporter.flush(10)
    assert slept == [31.0]  # the reset plus a second of slack, not the zero back-off
    assert len(api.taken) == 1


# -- the client against GitHub's documented answers ------------------------------------------------


@pytest.fixture
def github() -> Iterator[GitHubApi]:
    server = GitHubApi(REPO, TOKEN).start()
    yield server
    server.stop()


def test_client_sends_what_github_documents(github: GitHubApi) -> None:
    api = GitHubStatusApi(github.url, REPO, SecretStr(TOKEN))
    api.post(CommitStatus(SHA, "pending", "Run 1 queued", "https://ci.example.org/runs/1"))
    api.close()
    [request] = github.requests
    assert request.answered == 201
    assert request.path == f"/repos/{REPO}/statuses/{SHA}"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/vnd.github+json"
    assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert request.headers["User-Agent"].startswith("pi-cicd")
    assert request.body == {"state": "pending", "description": "Run 1 queued", "context": "pi-cicd",
                            "target_url": "https://ci.example.org/runs/1"}


@pytest.mark.parametrize(
    ("kind", "permanent", "words"),
    [("401", True, "Bad credentials"), ("500", False, "500"), ("ratelimit", False, "rate limited")],
)
def test_client_sorts_githubs_refusals(github: GitHubApi, kind: str, permanent: bool, words: str) -> None:
    github.fail_next(1, kind)
    api = GitHubStatusApi(github.url, REPO, SecretStr(TOKEN))
    with pytest.raises(CommitStatusFailed) as caught:
        api.post(CommitStatus(SHA, "success", "ok"))
    api.close()
    assert caught.value.permanent is permanent
    assert words in str(caught.value) and TOKEN not in str(caught.value)
    if kind == "ratelimit":
        assert caught.value.retry_after is not None and 0 <= caught.value.retry_after <= 3


def test_client_reports_validation_and_unknown_repository(github: GitHubApi) -> None:
    api = GitHubStatusApi(github.url, REPO, SecretStr(TOKEN))
    with pytest.raises(CommitStatusFailed, match="No commit found") as caught:
        api.post(CommitStatus("f" * 39 + "z", "success", "ok"))
    assert caught.value.permanent
    other = GitHubStatusApi(github.url, "someone/else", SecretStr(TOKEN))
    with pytest.raises(CommitStatusFailed, match="Commit statuses: write") as caught:
        other.post(CommitStatus(SHA, "success", "ok"))
    assert caught.value.permanent
    api.close()
    other.close()


def test_client_refused_connection_is_transient() -> None:
    server = GitHubApi(REPO, TOKEN)  # never started: the port refuses connections
    api = GitHubStatusApi(server.url, REPO, SecretStr(TOKEN))
    with pytest.raises(CommitStatusFailed, match="cannot reach") as caught:
        api.post(CommitStatus(SHA, "success", "ok"))
    api.close()
    assert not caught.value.permanent


def test_enterprise_api_url_keeps_its_path() -> None:
    server = GitHubApi(REPO, TOKEN, prefix="/api/v3").start()
    try:
        api = GitHubStatusApi(server.url + "/", REPO, SecretStr(TOKEN))
        api.post(CommitStatus(SHA, "success", "ok"))
        api.close()
        assert server.requests[0].path == f"/api/v3/repos/{REPO}/statuses/{SHA}"
    finally:
        server.stop()


# -- settings --------------------------------------------------------------------------------------


def test_a_token_needs_the_repository() -> None:
    with pytest.raises(SettingsError, match="CI_GITHUB_TOKEN: needs CI_GITHUB_REPO") as caught:
        load_settings(CiSettings, {**BASE, "CI_GITHUB_TOKEN": TOKEN})
    assert TOKEN not in str(caught.value)


def test_token_is_masked_and_urls_are_checked() -> None:
    settings = load_settings(CiSettings, {**BASE, "CI_GITHUB_TOKEN": TOKEN, "CI_GITHUB_REPO": REPO,
                                          "CI_PUBLIC_URL": "https://ci.example.org/"})
    assert TOKEN not in repr(settings) and TOKEN in settings.secret_values()
    assert settings.ci_public_url == "https://ci.example.org"
    assert settings.ci_github_api_url == "https://api.github.com"
    with pytest.raises(SettingsError, match="CI_GITHUB_API_URL"):
        load_settings(CiSettings, {**BASE, "CI_GITHUB_API_URL": "ftp://github.example.org"})
    with pytest.raises(SettingsError, match="CI_PUBLIC_URL"):
        load_settings(CiSettings, {**BASE, "CI_PUBLIC_URL": "https://user:pw@ci.example.org"})


# -- the queue's hook ------------------------------------------------------------------------------


def test_the_queue_reports_new_branch_runs_only(tmp_path: Any) -> None:
    import json

    from ci_agent.payload import PushEvent, parse_push
    from ci_agent.queue import RunQueue
    from shared.runstore import RunStore
    from tests.support.payloads import GITHUB_PAYLOADS

    def push(ref: str = "refs/heads/main", after: str = SHA) -> PushEvent:
        data = json.loads((GITHUB_PAYLOADS / "push_with-new-branch.payload.json").read_text())
        data["ref"], data["after"] = ref, after
        return parse_push(data)

    reported: list[Run] = []
    with RunStore(tmp_path / "runs.db") as store:
        queue = RunQueue(store, report=reported.append)
        branch = push()
        first = queue.submit(branch, "d-1")
        queue.submit(branch, "d-1")  # the same delivery again: a duplicate, nothing new to show
        queue.submit(push(ref="refs/tags/v1.0.0", after="b" * 40), "d-2")  # `after` may be a tag object: no status yet
        queue.close()
    assert [(r.number, r.status, r.commit) for r in reported] == [(first.number, "queued", branch.after)]


def test_closing_while_github_fails_does_not_wait_out_the_back_off() -> None:
    api = FakeApi(failures=1000)
    reporter = CommitStatusReporter(api, wait=tenacity.wait_fixed(3600), give_up_after=7200)
    reporter.report(run("queued"))
    wait_for(lambda: reporter._failing, what="the first failure")
    with capture_logs("WARNING") as logs:
        assert reporter.close(timeout=3600) is False
    assert reporter._thread is not None and not reporter._thread.is_alive()
    assert any("1 commit status(es) not sent" in e.message for e in logs)
    assert api.attempts == 1


def test_an_older_run_of_a_commit_does_not_hide_the_newer_one(reporters: list[CommitStatusReporter]) -> None:
    api = FakeApi()
    reporter = CommitStatusReporter(api, wait=NO_WAIT)
    reporters.append(reporter)
    reporter.report(run("queued", number=9))
    reporter.report(run("superseded", number=8, details={"superseded_by": 9}))
    assert reporter.flush(10)
    reporter.report(run("succeeded", number=9, version="1.0.0"))
    assert reporter.flush(10)
    assert [(s.state, s.description) for s in api.taken] == [
        ("pending", "Run 9 queued"), ("success", "Run 9 released 1.0.0")
    ]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "17"}, 17.0),
        ({"retry-after": "Thu, 01 Jan 1970 00:01:40 GMT"}, 60.0),  # an HTTP date, 100 - 40 s
        ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "130"}, 90.0),
        ({"x-ratelimit-remaining": "12", "x-ratelimit-reset": "130"}, None),
        ({}, None),
    ],
)
def test_the_wait_github_asks_for(headers: dict[str, str], expected: float | None) -> None:
    import httpx

    from ci_agent.commit_status import _retry_after

    assert _retry_after(httpx.Response(403, headers=headers), now=lambda: 40.0) == expected


# -- bounds ----------------------------------------------------------------------------------------


def test_a_status_failing_forever_is_given_up_after_its_attempts(reporters: list[CommitStatusReporter]) -> None:
    api = FakeApi(failures=1000)
    reporter = CommitStatusReporter(api, wait=NO_WAIT, max_attempts=4)
    reporters.append(reporter)
    with capture_logs("WARNING") as logs:
        reporter.report(run("queued"))
        assert reporter.flush(10)
    assert api.attempts == 4 and api.taken == []
    given_up = [e.message for e in logs if "given up" in e.message]
    assert len(given_up) == 1 and "tried 4 time(s)" in given_up[0] and "500" in given_up[0], logs


def test_a_retry_after_past_the_bound_gives_up_at_once(reporters: list[CommitStatusReporter]) -> None:
    api = FakeApi(failures=1000, error=CommitStatusFailed("GitHub answered 500", retry_after=3600))
    reporter = CommitStatusReporter(api, wait=NO_WAIT, give_up_after=300)
    reporters.append(reporter)
    slept: list[float] = []
    reporter._sleep = slept.append  # type: ignore[method-assign,assignment]
    with capture_logs("WARNING") as logs:
        reporter.report(run("queued"))
        assert reporter.flush(10)
    assert api.attempts == 1 and slept == []
    assert any("asks to wait 3600s more, past the 300s" in e.message for e in logs), logs


def test_a_newer_state_gets_attempts_of_its_own(reporters: list[CommitStatusReporter]) -> None:
    api = FakeApi(failures=3)
    reporter = CommitStatusReporter(api, wait=NO_WAIT, max_attempts=3)
    reporters.append(reporter)
    sleeping = threading.Event()
    resume = threading.Event()

    def sleep(seconds: float) -> None:
        sleeping.set()
        resume.wait(10)

    reporter._sleep = sleep  # type: ignore[method-assign]
    reporter.report(run("queued"))
    assert sleeping.wait(10)
    reporter.report(run("succeeded", version="1.0.0"))  # arrives during the first state's back-off
    resume.set()
    assert reporter.flush(10)
    assert [s.state for s in api.taken] == ["success"]
    assert api.attempts == 4  # 1 of the queued state (then replaced), 2 failed and 1 taken of the outcome


@pytest.mark.parametrize("url", ["http://api.github.com", "http://ghe.example.org/api/v3", "http://10.0.0.7:8080"])
def test_a_clear_text_api_url_off_loopback_is_refused(url: str) -> None:
    with pytest.raises(SettingsError, match="CI_GITHUB_API_URL.*unencrypted.*use https://") as caught:
        load_settings(CiSettings, {**BASE, "CI_GITHUB_TOKEN": TOKEN, "CI_GITHUB_REPO": REPO, "CI_GITHUB_API_URL": url})
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://[::1]:9000/api/v3", "http://localhost:3000"])
def test_a_clear_text_api_url_on_loopback_is_accepted(url: str) -> None:
    settings = load_settings(CiSettings, {**BASE, "CI_GITHUB_API_URL": url})
    assert settings.ci_github_api_url == url
