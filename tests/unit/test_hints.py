"""Registry push notifications: what a body names, and one app's gate of early polls (a frozen clock)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from cd_agent.hints import EarlyPolls, NotAHint, repositories_named

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "registry-hooks"


def envelope(*events: object) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def push(repository: str, tag: str | None = "1.2.3", action: str = "push") -> dict[str, object]:
    target: dict[str, object] = {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                 "repository": repository, "digest": "sha256:" + "a" * 64}
    if tag is not None:
        target["tag"] = tag
    return {"id": "x", "action": action, "target": target, "request": {"host": "127.0.0.1:5000"}}


def test_docker_hubs_documented_payload_names_its_repository() -> None:
    assert repositories_named((FIXTURES / "docker-hub-push.json").read_bytes()) == {"svendowideit/testhook"}


def test_a_docker_hub_single_name_is_a_library_repository() -> None:
    body = json.dumps({"push_data": {"tag": "1"}, "repository": {"repo_name": "nginx"}}).encode()
    assert repositories_named(body) == {"library/nginx"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (envelope(push("owner/app")), {"owner/app"}),
        (envelope(push("Owner/App")), {"owner/app"}),
        (envelope(push("owner/app"), push("other/x", tag="2.0.0")), {"owner/app", "other/x"}),
        # a blob push or a push by digest (no tag) comes before the tag exists: no hint
        (envelope(push("owner/app", tag=None)), set()),
        (envelope(push("owner/app", action="pull")), set()),
        (envelope(push("owner/app", action="delete")), set()),
        (envelope(push("../etc")), {"../etc"}),  # only ever compared with the apps' repositories
        (envelope(push("a b")), set()),
        (envelope(push("x" * 300)), set()),
        (envelope({"action": "push", "target": "nope"}, "junk"), set()),
        (envelope(), set()),
    ],
)
def test_envelopes_name_the_repositories_a_tag_was_pushed_to(body: bytes, expected: set[str]) -> None:
    assert repositories_named(body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"ref": "refs/heads/main"}', "neither a Docker Hub webhook"),
        (b'{"events": {"a": 1}}', "events is not a list"),
        (b'{"push_data": {}, "repository": "x"}', "repository is not an object"),
        (b'{"push_data": {}, "repository": {"repo_name": 5}}', "repo_name is not a repository name"),
    ],
)
def test_other_bodies_are_refused_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(NotAHint, match=message):
        repositories_named(body)


class Clock:
    """A clock the gate reads; its Condition waits are real but short (the tests never block on one)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def waiting(gate: EarlyPolls) -> tuple[threading.Thread, threading.Event]:
    """A thread in ``gate.wait(60)``, and the event it sets when that wait ends."""
    done = threading.Event()

    def sleeper() -> None:
        gate.wait(60)
        done.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    return thread, done


def test_a_hint_ends_the_wait_at_once_and_counts() -> None:
    gate = EarlyPolls(5.0)
    gate.hint()
    gate.wait(3600)  # returns at once: a hint is pending and none ran before
    assert gate.counts().received == 1 and gate.counts().early_polls == 1


def test_without_a_hint_the_wait_lasts_its_seconds() -> None:
    gate = EarlyPolls(5.0)
    gate.wait(0.05)
    assert gate.counts().early_polls == 0


def test_hints_within_the_interval_coalesce_into_one_poll_when_it_ends() -> None:
    clock = Clock()
    gate = EarlyPolls(5.0, clock=clock)
    gate.hint()
    gate.wait(60)
    for _ in range(10_000):  # during the poll that followed, or right after it
        gate.hint()
    thread, done = waiting(gate)
    assert not done.wait(0.2), "a second early poll inside CD_HOOK_MIN_INTERVAL"
    clock.now += 5.0
    gate.hint()  # any notify makes the waiter look at the clock again
    assert done.wait(5)
    thread.join()
    assert gate.counts().received == 10_002 and gate.counts().early_polls == 2


def test_a_regular_poll_answers_the_hints_pending_before_it() -> None:
    clock = Clock()
    gate = EarlyPolls(5.0, clock=clock)
    gate.hint()
    gate.wait(60)  # early poll at 1000
    gate.hint()  # pending until 1005
    clock.now += 100.0  # the wait's deadline passed before the gate opened again: a regular poll
    gate.wait(0)
    gate.wait(0)  # nothing pending now
    assert gate.counts().early_polls == 1


def test_wake_ends_a_wait_for_a_stop_request() -> None:
    gate = EarlyPolls(5.0)
    thread = threading.Thread(target=gate.wait, args=(3600,))
    thread.start()
    gate.wake()
    thread.join(5)
    assert not thread.is_alive()
    assert gate.counts().early_polls == 0


def test_an_early_poll_is_followed_by_one_poll_a_settle_later() -> None:
    """The registry notifies before it writes the tag: the early poll may miss it, its follow-up does not."""
    clock = Clock()
    gate = EarlyPolls(5.0, clock=clock, settle=1.0)
    gate.hint()
    gate.wait(60)  # the early poll, at 1000
    thread, done = waiting(gate)
    assert not done.wait(0.2), "the follow-up came before its settle time"
    clock.now += 1.0
    assert done.wait(5), "no follow-up poll"
    thread.join()
    assert gate.counts().early_polls == 1  # a follow-up is not an early poll
    # Only one: the wait after the follow-up lasts its seconds.
    clock.now += 0.5
    waiter, ended = waiting(gate)
    assert not ended.wait(0.3), "a second follow-up"
    gate.wake()
    waiter.join(5)


def test_a_follow_up_answers_the_hints_that_came_during_the_early_poll() -> None:
    clock = Clock()
    gate = EarlyPolls(5.0, clock=clock, settle=1.0)
    gate.hint()
    gate.wait(60)  # early poll at 1000
    gate.hint()  # during it: the gate is closed until 1005, the follow-up is due at 1001
    clock.now += 1.0
    gate.wait(60)  # the follow-up
    clock.now += 10.0
    thread, done = waiting(gate)
    assert not done.wait(0.3), "the hint answered by the follow-up made another early poll"
    gate.wake()
    thread.join(5)
    assert gate.counts().early_polls == 1
