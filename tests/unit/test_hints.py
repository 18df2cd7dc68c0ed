"""Registry push notifications: what a body names, and one app's gate of early polls (a frozen clock)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from cd_agent.hints import FOLLOW_UPS, EarlyPolls, NotAHint, pushes_named

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
    assert pushes_named((FIXTURES / "docker-hub-push.json").read_bytes()) == {"svendowideit/testhook": {"latest"}}


def test_a_docker_hub_single_name_is_a_library_repository() -> None:
    body = json.dumps({"push_data": {"tag": "1"}, "repository": {"repo_name": "nginx"}}).encode()
    assert pushes_named(body) == {"library/nginx": {"1"}}


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
    assert set(pushes_named(body)) == expected


def test_the_tags_named_are_kept_per_repository_and_only_when_they_are_tag_names() -> None:
    body = envelope(push("owner/app", tag="1.2.3"), push("owner/app", tag="latest"), push("other/x", tag="-x"),
                    push("other/y", tag="a" * 129), push("other/z", tag="1.0+build"))
    assert pushes_named(body) == {"owner/app": {"1.2.3", "latest"}, "other/x": set(), "other/y": set(),
                                  "other/z": set()}
    hub = json.dumps({"push_data": {"tag": 5}, "repository": {"repo_name": "owner/app"}}).encode()
    assert pushes_named(hub) == {"owner/app": set()}


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
        pushes_named(body)


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


def test_quick_follow_ups_come_while_the_named_tag_is_not_listed() -> None:
    """The registry notifies before the tag is readable: look again 0.1 s later, then 0.2 s, ... until it is."""
    clock = Clock()
    gate = EarlyPolls(5.0, clock=clock)
    gate.hint(["1.2.3"])
    gate.wait(60)  # the early poll
    gate.listed(["1.2.2"])  # it missed the tag
    thread, done = waiting(gate)
    assert not done.wait(0.05), "the follow-up came before its time"
    clock.now += FOLLOW_UPS[0]
    assert done.wait(5), "no quick follow-up"
    thread.join()
    gate.listed(["1.2.2", "1.2.3"])  # the follow-up saw it: no more
    clock.now += FOLLOW_UPS[1]
    waiter, ended = waiting(gate)
    assert not ended.wait(0.3), "a follow-up after the tag was seen"
    gate.wake()
    waiter.join(5)
    assert gate.counts().early_polls == 1


def test_follow_ups_for_a_tag_that_never_comes_end_after_the_last_gap() -> None:
    clock = Clock()
    gaps = (0.01, 0.02, 0.04)
    gate = EarlyPolls(60.0, clock=clock, follow_ups=gaps)
    gate.hint(["9.9.9"])  # named, never pushed (the body is not believed)
    gate.wait(3600)
    follow_ups = 0
    while True:
        gate.listed([])
        thread, done = waiting(gate)
        clock.now += 1.0  # more than any gap
        if not done.wait(0.5):
            gate.wake()
            thread.join(5)
            break
        thread.join()
        follow_ups += 1
    assert follow_ups == len(gaps)
    assert gate.counts().early_polls == 1


def test_a_tag_listed_without_its_manifest_is_looked_for_again() -> None:
    clock = Clock()
    gate = EarlyPolls(5.0, clock=clock)
    gate.hint(["1.2.3"])
    gate.wait(60)
    gate.listed(["1.2.3"])
    gate.no_manifest("1.2.3")  # listed, but its manifest is not readable yet
    thread, done = waiting(gate)
    clock.now += FOLLOW_UPS[0]
    assert done.wait(5), "no follow-up for a tag without its manifest"
    thread.join()


def test_a_tag_seen_by_the_early_poll_needs_no_follow_up() -> None:
    clock = Clock()
    gate = EarlyPolls(5.0, clock=clock, settle=1.0)
    gate.hint(["1.2.3"])
    gate.wait(60)
    gate.listed(["1.2.3"])
    clock.now += 1.0
    thread, done = waiting(gate)
    assert not done.wait(0.3), "a follow-up although the tag was there"
    gate.wake()
    thread.join(5)


def test_tags_named_while_the_gate_is_closed_go_to_the_poll_it_opens_for() -> None:
    clock = Clock()
    gate = EarlyPolls(5.0, clock=clock)
    gate.hint(["1.0.0"])
    gate.wait(60)
    gate.listed(["1.0.0"])
    gate.hint(["1.1.0"])  # during the deploy of 1.0.0: pending until 1005
    thread, done = waiting(gate)
    clock.now += 5.0
    gate.hint()
    assert done.wait(5)
    thread.join()  # the second early poll
    gate.listed(["1.0.0"])  # 1.1.0 not there yet
    waiter, ended = waiting(gate)
    clock.now += FOLLOW_UPS[0]
    assert ended.wait(5), "the tag named while the gate was closed got no follow-up"
    waiter.join()
    assert gate.counts().early_polls == 2


def test_an_early_poll_calls_on_early_in_the_waiting_thread_and_a_follow_up_does_not() -> None:
    clock = Clock()
    called: list[str] = []
    gate = EarlyPolls(5.0, clock=clock, on_early=lambda: called.append(threading.current_thread().name))
    gate.hint(["1.2.3"])
    gate.wait(60)  # the early poll
    assert called == [threading.current_thread().name]
    gate.listed([])
    thread, done = waiting(gate)
    clock.now += FOLLOW_UPS[0]
    assert done.wait(5)
    thread.join()
    assert len(called) == 1
