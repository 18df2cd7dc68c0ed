"""The poller's rules (ci_agent/poller.py) with a fake remote, a fake clock and a real RunQueue/RunStore."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loguru import logger

from ci_agent.payload import PushEvent
from ci_agent.poller import (
    Poller,
    PollFailed,
    RemoteRef,
    SeenRefs,
    StoreRuns,
    backoff_wait,
    parse_ls_remote,
    repository_name,
)
from ci_agent.queue import KIND, RunQueue
from ci_agent.settings import CiSettings
from shared.errors import SettingsError
from shared.notify import Email, Notifier
from shared.runstore import RunStore
from shared.settings import load_settings
from shared.testing import capture_logs

MAIN = "refs/heads/main"
A, B, C, T = ("a" * 40), ("b" * 40), ("c" * 40), ("d" * 40)


class FakeRemote:
    def __init__(self) -> None:
        self.current: dict[str, RemoteRef] = {}
        self.failing: Exception | None = None
        self.calls = 0

    def set(self, name: str, sha: str, commit: str | None = None) -> None:
        self.current[name] = RemoteRef(sha, commit or sha)

    def refs(self) -> dict[str, RemoteRef]:
        self.calls += 1
        if self.failing is not None:
            raise self.failing
        return dict(self.current)


class FakeClock:
    """Records the waits and calls ``on_wait(number of waits so far)``; says stop after ``stop_after`` waits."""

    def __init__(self, stop_after: int, on_wait: Callable[[int], None] = lambda count: None) -> None:
        self.waits: list[float] = []
        self.stop_after = stop_after
        self.on_wait = on_wait

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.on_wait(len(self.waits))
        return len(self.waits) >= self.stop_after


class FakeMailer:
    def __init__(self) -> None:
        self.sent: list[Email] = []

    def send(self, email: Email) -> None:
        self.sent.append(email)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    with RunStore(tmp_path / "runs.sqlite3") as runs:
        yield runs


@pytest.fixture
def queue(store: RunStore) -> RunQueue:
    return RunQueue(store)


@pytest.fixture
def remote() -> FakeRemote:
    return FakeRemote()


def make_poller(tmp_path: Path, remote: FakeRemote, queue: RunQueue, store: RunStore, **kwargs: object) -> Poller:
    return Poller(remote, queue.accept, StoreRuns(store), SeenRefs(tmp_path / "poll-refs.json"), branch="main",
                  repository="octo/app", interval=30, **kwargs)  # type: ignore[arg-type]


def test_first_poll_queues_the_head_and_remembers_the_tags(tmp_path: Path, remote: FakeRemote, queue: RunQueue,
                                                          store: RunStore) -> None:
    remote.set(MAIN, A)
    remote.set("refs/tags/v1.0.0", T, B)
    remote.set("refs/tags/v0.9.0", C)
    poller = make_poller(tmp_path, remote, queue, store)

    queued = poller.poll_once()

    assert len(queued) == 1
    run = store.get(queued[0])
    assert run is not None and run.commit == A and run.ref == MAIN and run.details["source"] == "poll"
    event = PushEvent.from_details(run.details["event"])
    assert event.branch == "main" and event.repository == "octo/app"
    saved = json.loads((tmp_path / "poll-refs.json").read_text())["refs"]
    assert saved == {MAIN: A, "refs/tags/v1.0.0": T, "refs/tags/v0.9.0": C}


def test_nothing_moved_queues_nothing(tmp_path: Path, remote: FakeRemote, queue: RunQueue, store: RunStore) -> None:
    remote.set(MAIN, A)
    poller = make_poller(tmp_path, remote, queue, store)
    poller.poll_once()

    written = (tmp_path / "poll-refs.json").stat()
    assert poller.poll_once() == []
    assert len(store.list(kind=KIND)) == 1
    # an SD card is not worn by polls that find nothing: the seen refs are not written again
    after = (tmp_path / "poll-refs.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


def test_a_moved_head_and_a_new_release_tag_are_queued_other_tags_are_not(
    tmp_path: Path, remote: FakeRemote, queue: RunQueue, store: RunStore
) -> None:
    remote.set(MAIN, A)
    poller = make_poller(tmp_path, remote, queue, store)
    poller.poll_once()
    remote.set(MAIN, B)
    remote.set("refs/tags/v1.2.3", T, B)  # annotated: the run builds the commit it tags
    remote.set("refs/tags/v1.2", C)
    remote.set("refs/tags/nightly", C)

    queued = [store.get(number) for number in poller.poll_once()]

    assert [(run.ref, run.commit) for run in queued if run] == [(MAIN, B), ("refs/tags/v1.2.3", B)]
    tag_run = queued[1]
    assert tag_run is not None
    event = PushEvent.from_details(tag_run.details["event"])
    assert event.release_version == "1.2.3" and event.branch is None
    head_run = queued[0]
    assert head_run is not None and PushEvent.from_details(head_run.details["event"]).before == A


def test_many_new_tags_in_one_poll_queue_only_the_highest(
    tmp_path: Path, remote: FakeRemote, queue: RunQueue, store: RunStore
) -> None:
    remote.set(MAIN, A)
    poller = make_poller(tmp_path, remote, queue, store)
    poller.poll_once()
    for patch in range(12):  # v1.0.11 > v1.0.9 as a version, < as text
        remote.set(f"refs/tags/v1.0.{patch}", f"{patch:040x}")
    remote.set(MAIN, B)

    with capture_logs("INFO") as logs:
        queued = [store.get(number) for number in poller.poll_once()]

    assert [(run.ref, run.commit) for run in queued if run] == [(MAIN, B), ("refs/tags/v1.0.11", f"{11:040x}")]
    lines = [e.message for e in logs if "at once" in e.message]
    assert lines == ["poll: 12 new release tags at once; releasing only the highest, v1.0.11; 11 skipped "
                     "(v1.0.0 … v1.0.10)"]
    saved = json.loads((tmp_path / "poll-refs.json").read_text())["refs"]
    assert all(f"refs/tags/v1.0.{patch}" in saved for patch in range(12))
    assert poller.poll_once() == []  # the skipped tags are remembered, not queued later


def test_one_new_tag_is_queued_without_a_word_about_skipping(
    tmp_path: Path, remote: FakeRemote, queue: RunQueue, store: RunStore
) -> None:
    remote.set(MAIN, A)
    poller = make_poller(tmp_path, remote, queue, store)
    poller.poll_once()
    remote.set("refs/tags/v2.0.0", C)
    with capture_logs("INFO") as logs:
        assert len(poller.poll_once()) == 1
    assert not any("at once" in e.message for e in logs)


def test_a_restart_does_not_queue_again(tmp_path: Path, remote: FakeRemote, queue: RunQueue, store: RunStore) -> None:
    remote.set(MAIN, A)
    make_poller(tmp_path, remote, queue, store).poll_once()
    remote.set("refs/tags/v1.0.0", A)
    make_poller(tmp_path, remote, queue, store).poll_once()

    assert make_poller(tmp_path, remote, queue, store).poll_once() == []
    assert [(run.ref, run.commit) for run in store.list(kind=KIND)] == [("refs/tags/v1.0.0", A), (MAIN, A)]


def test_a_commit_a_webhook_delivered_is_not_queued_again(
    tmp_path: Path, remote: FakeRemote, queue: RunQueue, store: RunStore
) -> None:
    remote.set(MAIN, A)
    poller = make_poller(tmp_path, remote, queue, store)
    poller.poll_once()
    webhook_event = PushEvent(ref=MAIN, branch="main", tag=None, after=B, before=A, deleted=False,
                              repository="octo/app")
    delivered = queue.accept(webhook_event, "delivery-1").run
    remote.set(MAIN, B)

    assert poller.poll_once() == []
    assert [run.number for run in store.list(kind=KIND) if run.commit == B] == [delivered.number]
    assert json.loads((tmp_path / "poll-refs.json").read_text())["refs"][MAIN] == B


def test_a_released_head_is_a_duplicate_on_the_first_poll(
    tmp_path: Path, remote: FakeRemote, queue: RunQueue, store: RunStore
) -> None:
    # Released by this agent through another ref (`ci-agent run --ref <sha>` records the sha as its ref).
    released = store.create(kind=KIND, commit=A, ref=A, details={})
    store.update(released.number, status="succeeded", version="1.0.0")
    remote.set(MAIN, A)

    assert make_poller(tmp_path, remote, queue, store).poll_once() == []
    assert len(store.list(kind=KIND)) == 1


def test_a_deleted_tag_is_forgotten_and_its_return_is_queued(
    tmp_path: Path, remote: FakeRemote, queue: RunQueue, store: RunStore
) -> None:
    remote.set(MAIN, A)
    remote.set("refs/tags/v1.0.0", A)
    poller = make_poller(tmp_path, remote, queue, store)
    poller.poll_once()
    del remote.current["refs/tags/v1.0.0"]
    poller.poll_once()
    assert "refs/tags/v1.0.0" not in json.loads((tmp_path / "poll-refs.json").read_text())["refs"]
    remote.set("refs/tags/v1.0.0", B)

    queued = poller.poll_once()

    assert [(run.ref, run.commit) for run in map(store.get, queued) if run] == [("refs/tags/v1.0.0", B)]


def test_failures_back_off_and_are_reported_once_per_streak(
    tmp_path: Path, remote: FakeRemote, queue: RunQueue, store: RunStore
) -> None:
    remote.set(MAIN, A)
    remote.failing = PollFailed("git ls-remote x failed (exit 128): not found")

    def recover_after_three_failures(waits: int) -> None:
        if waits == 3:
            remote.failing = None

    mailer = FakeMailer()
    notifier = Notifier(mailer)
    clock = FakeClock(stop_after=6, on_wait=recover_after_three_failures)
    messages: list[tuple[str, str]] = []
    sink = logger.add(lambda m: messages.append((m.record["level"].name, m.record["message"])), level="INFO")
    poller = make_poller(tmp_path, remote, queue, store, clock=clock, notifier=notifier,
                         backoff=lambda failures: 30.0 * 2 ** failures)
    try:
        poller.run()
        notifier.flush()
    finally:
        logger.remove(sink)
        notifier.close()

    assert remote.calls == 6
    assert clock.waits == [60.0, 120.0, 240.0, 30.0, 30.0, 30.0]
    warnings = [text for level, text in messages if level == "WARNING"]
    assert len(warnings) == 1 and "not found" in warnings[0]
    assert len([text for level, text in messages if "works again" in text]) == 1
    assert [email.subject for email in mailer.sent] == ["[pi-cicd] polling the repository is failing"]
    assert len(store.list(kind=KIND)) == 1  # the head, queued once the remote answered


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    wait = backoff_wait(10, cap=100)
    first = [wait(1) for _ in range(20)]
    assert all(10 <= value <= 12.5 for value in first)
    assert all(20 <= wait(2) <= 22.5 for _ in range(20))
    assert wait(30) == 100
    assert len(set(first)) > 1  # jittered


def test_parse_ls_remote_peels_annotated_tags() -> None:
    output = f"{A}\trefs/heads/main\n{T}\trefs/tags/v1.0.0\n{B}\trefs/tags/v1.0.0^{{}}\n{C}\trefs/tags/v0.1.0\n"
    assert parse_ls_remote(output) == {
        MAIN: RemoteRef(A, A), "refs/tags/v1.0.0": RemoteRef(T, B), "refs/tags/v0.1.0": RemoteRef(C, C),
    }


@pytest.mark.parametrize(
    ("github_repo", "url", "expected"),
    [
        ("octo/app", "file:///x/y.git", "octo/app"),
        (None, "https://user:tok@github.com/octo/app.git", "octo/app"),
        (None, "git@github.com:octo/app.git", "octo/app"),
        (None, "/tmp/pytest-1/remote.git", "pytest-1/remote"),
        (None, "/remote.git", "local/repository"),
    ],
)
def test_repository_name(github_repo: str | None, url: str, expected: str) -> None:
    assert repository_name(github_repo, url) == expected


def test_an_unreadable_state_file_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "poll-refs.json"
    path.write_text("{not json")
    assert SeenRefs(path).load() is None


def test_poll_interval_is_off_by_default_and_validated() -> None:
    base = {"CI_REPO_URL": "https://github.com/octocat/hello-world.git", "CI_IMAGE": "docker.io/octocat/hello-world",
            "CI_ALLOW_UNSIGNED": "true"}
    assert load_settings(CiSettings, base).ci_poll_interval is None
    assert load_settings(CiSettings, {**base, "CI_POLL_INTERVAL": ""}).ci_poll_interval is None
    assert load_settings(CiSettings, {**base, "CI_POLL_INTERVAL": "60"}).ci_poll_interval == 60
    for bad in ("0", "-5", "4.9", "nan", "inf", "soon"):
        with pytest.raises(SettingsError) as info:
            load_settings(CiSettings, {**base, "CI_POLL_INTERVAL": bad})
        assert "CI_POLL_INTERVAL" in str(info.value)


def test_an_unexpected_error_is_a_failed_poll_not_a_dead_poller(
    tmp_path: Path, remote: FakeRemote, queue: RunQueue, store: RunStore
) -> None:
    remote.set(MAIN, A)
    remote.failing = RuntimeError("something nobody expected")
    poller = make_poller(tmp_path, remote, queue, store, backoff=lambda failures: 99.0)

    assert poller.step() == 99.0
    remote.failing = None
    assert poller.step() == 30
    assert poller.failures == 0 and len(store.list(kind=KIND)) == 1
