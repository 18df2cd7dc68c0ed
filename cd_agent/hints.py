"""A registry's push notification is a hint to poll now, nothing more.

Two bodies are understood, and from either only repository names are taken:

- Docker Hub's webhook (``{"push_data": {"tag": ...}, "repository": {"repo_name": "owner/app"}, ...}``);
  its ``callback_url`` is never called: no request ever leaves the agent because of a hint.
- the distribution registry's notification envelope (``application/vnd.docker.distribution.events.v1+json``,
  ``{"events": [{"action": "push", "target": {"repository": "owner/app", "tag": ...}}]}``); only pushes
  that name a tag count (the blob pushes before a manifest would wake a poll too early to see the tag).

The body is never trusted: an app watching a named repository is polled through the normal poll (tags
list, quarantine, constraint, HEAD, digest pin), as if its poll interval had just run out.

:class:`EarlyPolls` is one app's gate: at most one early poll per ``CD_HOOK_MIN_INTERVAL``; hints while
the app polls or deploys, or while the gate is closed, coalesce into one poll, as soon as it may run.
Each early poll is followed by one more poll ``SETTLE`` seconds later: the distribution registry sends its
notification from the manifest's upload, before it writes the tag, so the early poll can miss the tag
(not listed yet, or listed without its manifest); without the follow-up that push waited for the next
regular poll (30 s at ``CD_POLL_INTERVAL=30``, seen under load). A follow-up is one tags list when nothing
is new; it answers the hints pending until then and is not counted as an early poll.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# The two formats, by what their JSON holds (the registry sends its content type; Docker Hub sends JSON).
DISTRIBUTION_EVENTS = "application/vnd.docker.distribution.events.v1+json"
DOCKER_HUB_DEFAULT_NAMESPACE = "library"
SETTLE = 1.0  # seconds from an early poll to its follow-up (see the module docstring)


class NotAHint(ValueError):
    """The body is neither a Docker Hub webhook nor a registry notification envelope (400)."""


def repositories_named(body: bytes) -> frozenset[str]:
    """The repositories a hook body says were pushed to (``owner/app``, ``library/x`` for single names).

    An envelope with no tag push names none (an empty set, not an error). ``NotAHint`` when the body is
    not one of the two formats.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise NotAHint("the body is not JSON") from None
    if not isinstance(data, dict):
        raise NotAHint("the body is not a JSON object")
    if "events" in data:
        return _from_envelope(data["events"])
    if "repository" in data and "push_data" in data:
        return _from_docker_hub(data["repository"])
    raise NotAHint("neither a Docker Hub webhook (push_data, repository) nor a registry envelope (events)")


def _from_envelope(events: object) -> frozenset[str]:
    if not isinstance(events, list):
        raise NotAHint("events is not a list")
    names = set()
    for event in events:
        if not isinstance(event, dict) or event.get("action") != "push":
            continue
        target = event.get("target")
        if not isinstance(target, dict) or not isinstance(target.get("tag"), str) or not target["tag"]:
            continue
        name = _repository(target.get("repository"))
        if name is not None:
            names.add(name)
    return frozenset(names)


def _from_docker_hub(repository: object) -> frozenset[str]:
    if not isinstance(repository, dict):
        raise NotAHint("repository is not an object")
    name = _repository(repository.get("repo_name"))
    if name is None:
        raise NotAHint("repository.repo_name is not a repository name")
    return frozenset({name})


def _repository(value: object) -> str | None:
    """A repository path as the agent's ``ImageRef.repository`` spells it; None for anything else."""
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        return None
    name = value.strip().lower()
    if not name or any(not (char.isalnum() or char in "._-/") for char in name):
        return None
    return name if "/" in name else f"{DOCKER_HUB_DEFAULT_NAMESPACE}/{name}"


@dataclass(frozen=True)
class HintCounts:
    """What one app's gate has seen: hints received, early polls they caused."""

    received: int
    early_polls: int


class EarlyPolls:
    """One app's hints and its watcher's waits between polls.

    The watcher sleeps in :meth:`wait`; :meth:`hint` (the listener's threads) ends that sleep early, at
    most once per ``min_interval``: a hint within the interval, or while a poll or deploy runs, leaves
    one poll pending, run as soon as the interval allows. The wait after an early poll ends ``settle``
    seconds after it began, once (the follow-up). :meth:`wake` ends a wait for a stop request.
    """

    def __init__(
        self, min_interval: float, *, clock: Callable[[], float] = time.monotonic, settle: float = SETTLE
    ) -> None:
        self._min_interval = min_interval
        self._clock = clock
        self._settle = settle
        self._changed = threading.Condition()
        self._pending = False
        self._follow_up: float | None = None  # when the last early poll's follow-up is due
        self._woken = False
        self._last_early: float | None = None
        self._received = 0
        self._early_polls = 0

    def hint(self) -> None:
        with self._changed:
            self._received += 1
            self._pending = True
            self._changed.notify_all()

    def wake(self) -> None:
        with self._changed:
            self._woken = True
            self._changed.notify_all()

    def counts(self) -> HintCounts:
        with self._changed:
            return HintCounts(self._received, self._early_polls)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when a hint may run a poll now or :meth:`wake` was called.

        Whatever ends it, the hints pending until now are answered by the poll that follows.
        """
        with self._changed:
            deadline = self._clock() + seconds
            while not self._woken:
                now = self._clock()
                if now >= deadline:
                    break  # the regular poll
                due = self._due() if self._pending else None
                if due is not None and due <= now:
                    self._pending = False
                    self._last_early = now
                    self._early_polls += 1
                    self._follow_up = now + self._settle
                    return
                if self._follow_up is not None and self._follow_up <= now:
                    break  # the early poll's follow-up
                wake_at = min(t for t in (deadline, due, self._follow_up) if t is not None)
                self._changed.wait(wake_at - now)
            self._pending = False
            self._follow_up = None

    def _due(self) -> float:
        return float("-inf") if self._last_early is None else self._last_early + self._min_interval
