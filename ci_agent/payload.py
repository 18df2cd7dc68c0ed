"""GitHub ``push`` payloads, validated strictly before anything else looks at them.

The checkout step builds git arguments from what this module returns, so every name that comes out
of a payload has passed ``check_ref_name``: git's own ``check-ref-format`` rules plus a stricter
allow-list. A branch or tag name may only use ASCII letters, digits and ``. _ - / + @ ,``; no
component may start with ``-`` (``refs/heads/--upload-pack=touch x`` is an option, not a branch) or
``.``; no ``..``, ``@{``, ``//``, backslash, space, control or shell metacharacter; no trailing
``/``, ``.`` or ``.lock``. Real branches that need more (non-ASCII, ``#``…) are refused with a 400
that says why: being too strict here costs a rename, being too lax could cost the machine.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ci_agent.errors import WebhookRejected

ZERO_SHA = "0" * 40
MAX_REF_NAME = 200

_SHA = re.compile(r"[0-9a-fA-F]{40}")
_REF_NAME_CHARS = re.compile(r"[A-Za-z0-9._/+@,-]+")
_FULL_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")
# Strict release numbers: X.Y.Z without leading zeros, as semver.org's core version.
_NUMBER = r"(?:0|[1-9][0-9]*)"
SEMVER_CORE = re.compile(rf"{_NUMBER}\.{_NUMBER}\.{_NUMBER}")
_RELEASE_TAG = re.compile(rf"v({_NUMBER}\.{_NUMBER}\.{_NUMBER})")


@dataclass(frozen=True)
class PushEvent:
    """What the pipeline needs from one ``push`` delivery.

    Exactly one of ``branch`` and ``tag`` is set. ``after`` is the commit to build (all zeros for a
    deletion). ``messages`` are the messages of every commit in the push, oldest first, for the
    version bump.
    """

    ref: str
    branch: str | None
    tag: str | None
    after: str
    before: str
    deleted: bool
    repository: str
    head_message: str | None = None
    messages: tuple[str, ...] = field(default_factory=tuple)
    pusher: str | None = None

    @property
    def release_version(self) -> str | None:
        """``"X.Y.Z"`` for a pushed tag ``vX.Y.Z``: that release, exactly; ``None`` otherwise."""
        if self.tag is None:
            return None
        match = _RELEASE_TAG.fullmatch(self.tag)
        return match.group(1) if match else None

    def to_details(self) -> dict[str, Any]:
        """A JSON-able form, stored in the run's ``details`` so a restarted agent can still run it."""
        data = asdict(self)
        data["messages"] = list(self.messages)
        return data

    @classmethod
    def from_details(cls, data: dict[str, Any]) -> PushEvent:
        """The inverse of ``to_details``; re-validates, since the database is just another input."""
        return parse_push(
            {
                "ref": data["ref"],
                "after": data["after"],
                "before": data["before"],
                "deleted": data["deleted"],
                "repository": {"full_name": data["repository"]},
                "head_commit": None if data.get("head_message") is None else {"message": data["head_message"]},
                "commits": [{"message": message} for message in data.get("messages", [])],
                "pusher": None if data.get("pusher") is None else {"name": data["pusher"]},
            }
        )


def check_ref_name(name: str) -> str | None:
    """Why ``name`` is refused as a branch or tag name, or ``None`` when it is acceptable."""
    if not name:
        return "is empty"
    if len(name) > MAX_REF_NAME:
        return f"is longer than {MAX_REF_NAME} characters"
    if not _REF_NAME_CHARS.fullmatch(name):
        return "may only contain ASCII letters, digits and . _ - / + @ ,"
    if name == "@":
        return "is '@'"
    if ".." in name:
        return "contains '..'"
    if "@{" in name:
        return "contains '@{'"
    for component in name.split("/"):
        if not component:
            return "has an empty path component (leading, trailing or double '/')"
        if component.startswith("-"):
            return "has a component starting with '-' (it would read as a git option)"
        if component.startswith("."):
            return "has a component starting with '.'"
        if component.endswith(".lock"):
            return "has a component ending with '.lock'"
    if name.endswith("."):
        return "ends with '.'"
    return None


def is_valid_ref_name(name: str) -> bool:
    return check_ref_name(name) is None


def parse_push(data: object) -> PushEvent:
    """Validate a decoded ``push`` payload; anything unexpected is ``WebhookRejected(400, why)``."""
    if not isinstance(data, dict):
        raise _bad("the payload is not a JSON object")
    ref = _string(data, "ref")
    branch, tag = _split_ref(ref)
    after = _sha(data, "after")
    before = _sha(data, "before")
    deleted = data.get("deleted", False)
    if not isinstance(deleted, bool):
        raise _bad("'deleted' is not a boolean")
    repository = data.get("repository")
    if not isinstance(repository, dict):
        raise _bad("'repository' is missing or not an object")
    full_name = _string(repository, "full_name", where="repository.full_name")
    if not _FULL_NAME.fullmatch(full_name):
        raise _bad(f"repository.full_name {_shorten(full_name)} is not owner/name")
    return PushEvent(
        ref=ref,
        branch=branch,
        tag=tag,
        after=after,
        before=before,
        deleted=deleted or after == ZERO_SHA,
        repository=full_name,
        head_message=_head_message(data.get("head_commit")),
        messages=_commit_messages(data.get("commits", [])),
        pusher=_pusher(data.get("pusher")),
    )


def _split_ref(ref: str) -> tuple[str | None, str | None]:
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            name = ref.removeprefix(prefix)
            problem = check_ref_name(name)
            if problem is not None:
                kind = "branch" if prefix == "refs/heads/" else "tag"
                raise _bad(f"ref {_shorten(ref)}: the {kind} name {problem}")
            return (name, None) if prefix == "refs/heads/" else (None, name)
    raise _bad(f"ref {_shorten(ref)} is neither refs/heads/<branch> nor refs/tags/<tag>")


def _sha(data: dict[str, Any], key: str) -> str:
    value = _string(data, key)
    if not _SHA.fullmatch(value):
        raise _bad(f"'{key}' {_shorten(value)} is not a 40-character hex commit id")
    return value.lower()


def _head_message(head: object) -> str | None:
    if head is None:
        return None
    if not isinstance(head, dict):
        raise _bad("'head_commit' is not an object")
    return _string(head, "message", where="head_commit.message")


def _commit_messages(commits: object) -> tuple[str, ...]:
    if not isinstance(commits, list):
        raise _bad("'commits' is not a list")
    messages = []
    for index, commit in enumerate(commits):
        if not isinstance(commit, dict):
            raise _bad(f"commits[{index}] is not an object")
        messages.append(_string(commit, "message", where=f"commits[{index}].message"))
    return tuple(messages)


def _pusher(pusher: object) -> str | None:
    if isinstance(pusher, dict) and isinstance(pusher.get("name"), str):
        return str(pusher["name"])
    return None


def _string(data: dict[str, Any], key: str, *, where: str | None = None) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise _bad(f"'{where or key}' is missing or not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A JSON escape such as "\ud800" decodes to a lone surrogate: stored, it would break every
        # later JSON answer about the run (GET /runs/N was a 500 for good).
        raise _bad(f"'{where or key}' is not valid Unicode (lone surrogate)") from exc
    return value


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _bad(reason: str) -> WebhookRejected:
    return WebhookRejected(400, f"not a valid push payload: {reason}")
