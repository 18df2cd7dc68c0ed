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
The distribution registry sends its notification from the manifest's upload, before it writes the tag,
so the early poll can miss the tag (not listed yet, or listed without its manifest). The body names the
tag, and that is used for one thing only, to decide whether to look again: while a tag named since the
early poll has not been seen listed with its manifest, quick follow-up polls come ``FOLLOW_UPS`` seconds
apart (0.1 s, then doubling: five within 3.1 s); what they find is whatever the registry says, as for
any poll. A body naming no tag gets one follow-up ``SETTLE`` seconds later. Follow-ups are tags lists
when nothing is new; they answer the hints pending until then and are not counted as early polls.
Without them a push whose tag the early poll missed waited for the next regular poll (30 s at
``CD_POLL_INTERVAL=30``, seen under load); with one follow-up a second later (the first remedy) the
hint → served median was 3.2 s, ~1 s of it that wait.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

# The two formats, by what their JSON holds (the registry sends its content type; Docker Hub sends JSON).
DISTRIBUTION_EVENTS = "application/vnd.docker.distribution.events.v1+json"
DOCKER_HUB_DEFAULT_NAMESPACE = "library"
SETTLE = 1.0  # seconds from an early poll to its one follow-up when the hints named no tag
# Seconds between the quick follow-ups of an early poll while a named tag is not seen (module docstring).
FOLLOW_UPS = (0.1, 0.2, 0.4, 0.8, 1.6)
# A burst of hints naming many tags keeps at most this many to look for (the rest still poll, once).
MAX_TAGS_AWAITED = 16


class NotAHint(ValueError):
    """The body is neither a Docker Hub webhook nor a registry notification envelope (400)."""


def pushes_named(body: bytes) -> dict[str, frozenset[str]]:
    """The repositories a hook body says were pushed to (``owner/app``, ``library/x`` for single names),
    each with the tags it names (only to decide whether to poll again, see :class:`EarlyPolls`).

    An envelope with no tag push names none (empty, not an error). ``NotAHint`` when the body is not one
    of the two formats.
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
        return _from_docker_hub(data["repository"], data["push_data"])
    raise NotAHint("neither a Docker Hub webhook (push_data, repository) nor a registry envelope (events)")


def _from_envelope(events: object) -> dict[str, frozenset[str]]:
    if not isinstance(events, list):
        raise NotAHint("events is not a list")
    names: dict[str, set[str]] = {}
    for event in events:
        if not isinstance(event, dict) or event.get("action") != "push":
            continue
        target = event.get("target")
        if not isinstance(target, dict) or not isinstance(target.get("tag"), str) or not target["tag"]:
            continue
        name = _repository(target.get("repository"))
        if name is not None:
            names.setdefault(name, set()).update(_tags(target["tag"]))
    return {name: frozenset(tags) for name, tags in names.items()}


def _from_docker_hub(repository: object, push_data: object) -> dict[str, frozenset[str]]:
    if not isinstance(repository, dict):
        raise NotAHint("repository is not an object")
    name = _repository(repository.get("repo_name"))
    if name is None:
        raise NotAHint("repository.repo_name is not a repository name")
    tag = push_data.get("tag") if isinstance(push_data, dict) else None
    return {name: frozenset(_tags(tag))}


def _tags(value: object) -> tuple[str, ...]:
    """``value`` as a tag name (the distribution spec's grammar), or nothing."""
    if isinstance(value, str) and 0 < len(value) <= 128 and value[0] not in ".-" and all(
        char.isascii() and (char.isalnum() or char in "_.-") for char in value
    ):
        return (value,)
    return ()


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
    one poll pending, run as soon as the interval allows. After an early poll, the waits end sooner for
    its follow-ups: ``follow_ups`` apart while a tag named since is not seen (:meth:`listed`,
    :meth:`no_manifest`, told by the poll), else once ``settle`` later when no tag was named. :meth:`wake`
    ends a wait for a stop request. ``on_early`` is called in the waiting thread as an early poll begins
    (``cd-agent watch`` starts the deploy process it may need: ``ChildDeploys.prepare``).
    """

    def __init__(
        self, min_interval: float, *, clock: Callable[[], float] = time.monotonic, settle: float = SETTLE,
        follow_ups: Sequence[float] = FOLLOW_UPS, on_early: Callable[[], None] | None = None,
    ) -> None:
        self._min_interval = min_interval
        self._on_early = on_early
        self._clock = clock
        self._settle = settle
        self._gaps = tuple(follow_ups)
        self._changed = threading.Condition()
        self._pending = False
        self._follow_up: float | None = None  # when the next follow-up is due (None: no follow-up)
        self._left: list[float] = []  # the gaps of the follow-ups not yet planned
        self._named: set[str] = set()  # tags named by the hints since the last early poll's series began
        self._awaited: set[str] = set()  # of those, the ones the polls have not seen ready yet
        self._woken = False
        self._last_early: float | None = None
        self._received = 0
        self._early_polls = 0

    def hint(self, tags: Iterable[str] = ()) -> None:
        """A push notification named this app's repository (and ``tags``, believed only as a reason to look)."""
        with self._changed:
            self._received += 1
            self._pending = True
            for tag in tags:
                if len(self._named) >= MAX_TAGS_AWAITED or tag in self._named:
                    continue
                self._named.add(tag)
                self._awaited.add(tag)
            self._changed.notify_all()

    def listed(self, tags: Iterable[str]) -> None:
        """A poll's tags list: the named tags in it need no more follow-ups (unless :meth:`no_manifest`)."""
        with self._changed:
            if self._awaited:
                self._awaited.difference_update(tags)

    def no_manifest(self, tag: str) -> None:
        """A poll found ``tag`` listed without its manifest (the registry has not finished writing it)."""
        with self._changed:
            if tag in self._named:
                self._awaited.add(tag)

    def wake(self) -> None:
        with self._changed:
            self._woken = True
            self._changed.notify_all()

    def counts(self) -> HintCounts:
        with self._changed:
            return HintCounts(self._received, self._early_polls)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when a hint may run a poll now, a follow-up is due, or :meth:`wake`
        was called. Whatever ends it, the hints pending until now are answered by the poll that follows.
        """
        if self._sleep(seconds) and self._on_early is not None:
            self._on_early()

    def _sleep(self, seconds: float) -> bool:
        """:meth:`wait`; True when it ended for an early poll."""
        with self._changed:
            began = self._clock()
            deadline = began + seconds
            self._plan_follow_up(began)
            while not self._woken:
                now = self._clock()
                if now >= deadline:
                    break  # the regular poll
                due = self._due() if self._pending else None
                if due is not None and due <= now:
                    self._pending = False
                    self._last_early = now
                    self._early_polls += 1
                    self._start_follow_ups(now)
                    return True
                if self._follow_up is not None and self._follow_up <= now:
                    self._follow_up = None
                    self._pending = False  # the follow-up answers them
                    return False
                wake_at = min(t for t in (deadline, due, self._follow_up) if t is not None)
                self._changed.wait(wake_at - now)
            self._pending = False
            self._end_follow_ups()
            return False

    def _start_follow_ups(self, now: float) -> None:
        """An early poll starts now: its follow-ups are planned when the watcher waits after it."""
        self._left = list(self._gaps) if self._awaited else []
        self._follow_up = None if self._awaited else now + self._settle

    def _plan_follow_up(self, now: float) -> None:
        """After a poll: the next quick follow-up while a named tag is still awaited, counted from now."""
        if self._follow_up is not None:
            return  # the settle follow-up (no tag named) keeps its time
        if self._awaited and self._left:
            self._follow_up = now + self._left.pop(0)
            return
        self._end_follow_ups()

    def _end_follow_ups(self) -> None:
        self._follow_up = None
        self._left = []
        if not self._pending:  # else the tags of the hints still waiting for the gate go to their poll
            self._named.clear()
            self._awaited.clear()

    def _due(self) -> float:
        return float("-inf") if self._last_early is None else self._last_early + self._min_interval
