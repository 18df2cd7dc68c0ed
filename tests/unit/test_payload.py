"""parse_push on GitHub's real example payloads and on mutations of them."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from ci_agent.errors import WebhookRejected
from ci_agent.payload import PushEvent, check_ref_name, parse_push
from tests.support.payloads import GITHUB_PAYLOADS as PAYLOADS


def payload(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return data


def new_branch() -> dict[str, Any]:
    return payload("push_with-new-branch.payload.json")


def rejected(data: object) -> str:
    with pytest.raises(WebhookRejected) as info:
        parse_push(data)
    assert info.value.status_code == 400
    return info.value.reason


def test_branch_push_from_github():
    event = parse_push(new_branch())
    assert event.ref == "refs/heads/master"
    assert event.branch == "master"
    assert event.tag is None
    assert event.after == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    assert event.before == "0" * 40
    assert event.deleted is False
    assert event.repository == "Codertocat/Hello-World"
    assert event.head_message == "Initial commit"
    assert event.messages == ("Initial commit",)
    assert event.pusher == "Codertocat"
    assert event.release_version is None


def test_tag_deletion_from_github():
    event = parse_push(payload("push_payload.json"))
    assert event.tag == "simple-tag"
    assert event.branch is None
    assert event.deleted is True
    assert event.head_message is None
    assert event.messages == ()
    assert event.release_version is None


def test_all_commit_messages_are_kept_in_order():
    data = new_branch()
    first = copy.deepcopy(data["commits"][0])
    first["message"] = "fix: one"
    second = copy.deepcopy(first)
    second["message"] = "feat: two\n\nBREAKING CHANGE: three"
    data["commits"] = [first, second]
    data["head_commit"]["message"] = second["message"]
    event = parse_push(data)
    assert event.messages == ("fix: one", "feat: two\n\nBREAKING CHANGE: three")
    assert event.head_message == second["message"]


def test_all_zero_after_counts_as_deletion():
    data = new_branch()
    data["after"] = "0" * 40
    data.pop("deleted")
    assert parse_push(data).deleted is True


def test_upper_case_sha_is_normalised():
    data = new_branch()
    data["after"] = data["after"].upper()
    assert parse_push(data).after == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


@pytest.mark.parametrize(
    ("tag", "version"),
    [("v1.2.3", "1.2.3"), ("v0.10.0", "0.10.0"), ("1.2.3", None), ("v1.2", None), ("v01.2.3", None),
     ("v1.2.3-rc.1", None), ("release", None)],
)
def test_release_version_of_tags(tag, version):
    data = new_branch()
    data["ref"] = f"refs/tags/{tag}"
    assert parse_push(data).release_version == version


def test_round_trip_through_run_details():
    event = parse_push(new_branch())
    details = json.loads(json.dumps(event.to_details()))
    assert PushEvent.from_details(details) == event


def test_crafted_details_are_revalidated():
    details = parse_push(new_branch()).to_details()
    details["ref"] = "refs/heads/--upload-pack=touch x"
    with pytest.raises(WebhookRejected):
        PushEvent.from_details(details)


@pytest.mark.parametrize(
    "ref",
    [
        "refs/heads/--upload-pack=touch x",
        "refs/heads/-x",
        "refs/heads/feature/-x",
        "refs/heads/a..b",
        "refs/heads/a@{1}",
        "refs/heads/a\\b",
        "refs/heads/a b",
        "refs/heads/a\tb",
        "refs/heads/a\x00b",
        "refs/heads/a\nb",
        "refs/heads/a;rm -rf",
        "refs/heads/$(id)",
        "refs/heads/`id`",
        "refs/heads/a|b",
        "refs/heads/a~1",
        "refs/heads/a^",
        "refs/heads/a:b",
        "refs/heads/a*",
        "refs/heads/a?",
        "refs/heads/a[",
        "refs/heads/.hidden",
        "refs/heads/x.lock",
        "refs/heads/x.",
        "refs/heads/x/",
        "refs/heads/a//b",
        "refs/heads/",
        "refs/heads/@",
        "refs/heads/" + "x" * 300,
        "refs/tags/--help",
        "refs/pull/1/head",
        "refs/remotes/origin/main",
        "main",
        "",
    ],
)
def test_crafted_refs_are_refused(ref):
    data = new_branch()
    data["ref"] = ref
    reason = rejected(data)
    assert "ref" in reason


def test_option_like_branch_reason_says_why():
    data = new_branch()
    data["ref"] = "refs/heads/--upload-pack=touch x"
    reason = rejected(data)
    assert "refs/heads/--upload-pack=touch x" in reason


@pytest.mark.parametrize("name", ["main", "release/1.x", "feature/JIRA-12_fix+more", "v1.2.3", "a.b", "user@host"])
def test_ordinary_names_pass(name):
    assert check_ref_name(name) is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("after", "6113728f"),
        ("after", "g" * 40),
        ("after", None),
        ("before", "x"),
        ("ref", 12),
        ("deleted", "no"),
        ("repository", None),
        ("repository", {"full_name": "no-slash"}),
        ("repository", {"full_name": "a/b/c"}),
        ("commits", "nope"),
        ("commits", [{"message": 1}]),
        ("commits", ["x"]),
        ("head_commit", "x"),
        ("head_commit", {"id": "abc"}),
    ],
)
def test_malformed_fields_are_refused(key, value):
    data = new_branch()
    data[key] = value
    reason = rejected(data)
    assert key in reason


@pytest.mark.parametrize("data", [[], "push", 3, None, {}])
def test_not_a_push_payload(data):
    rejected(data)


def test_ping_is_not_a_push():
    rejected(payload("ping_payload.json"))
