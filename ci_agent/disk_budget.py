"""``CI_DISK_BUDGET``: after each run, what this CI agent owns on the engine is pruned, oldest first, to stay
under the budget. This module is the policy (what is owned, what it weighs, what goes); the engine calls are
``ci_agent.effects.EngineDisk`` (``ci_agent.builder.DockerGateway``), and ``DiskBudget`` joins the two.

What CI owns: every image its builder makes carries the label ``pi-cicd.ci.image=NAME`` (the repository
it was built for: test images, release images, a multi-platform release's per-platform images). An image
is this agent's when NAME is one of its repositories' images and every tag it has is one CI makes
(``NAME:ci-test``, ``NAME:ci-test-<platform>``, ``NAME:ci-staging-<platform>``, ``NAME:latest``), or it has
none (a release whose ``latest`` moved on while a container still used it). What a failed build leaves
(untagged intermediate layers, built before the label's step) carries no label and is not found. An
image with any other tag is someone else's too (the CD agent's ``NAME:1.2.0`` pulled on the same engine,
a ``docker tag`` by hand): never touched. Images without the label (base images, anything a person
built or pulled) are never looked at. Stopped test containers the agent left behind (a crash during
the test step; labelled ``pi-cicd.role=ci-test`` and named ``pi-cicd-ci-test-...``) are removed whatever
the budget: CI removes its test containers itself otherwise. Containers of CI's images that are not its
test containers (the CD agent's app) are never touched, and Docker refuses to remove an image one uses.

What is always kept: ``NAME:latest`` and ``NAME:ci-staging-<platform>`` (the last successful release of
each repository, as one image or one per platform). Nothing is pruned while another run is in progress
(``CI_MAX_PARALLEL_RUNS`` above 1): its build may be using a cached layer of an image that would go.

What it weighs: the layers CI built, counted once however many of its images share them (the engine's
history of each owned image: an entry it knows by id is a layer built here; a pulled base image's
layers are ``<missing>`` or the base image itself, and are not CI's). The classic builder's cache is
those images' parent chains, so removing an image's last tag removes its share of the cache with it.
What goes first: the image tagged or used longest ago (``LastTagTime``, else when it was built).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ci_agent.errors import StepFailed
from shared.disk import format_size
from shared.errors import PiCicdError

if TYPE_CHECKING:
    import loguru

    from ci_agent.effects import EngineDisk

OWNER_LABEL = "pi-cicd.ci.image"
# CI's test containers: set at their creation (a label of the image is inherited by every container of it,
# the CD agent's app containers of CI's images included) and in their name (ci_agent/pipeline.py).
TEST_CONTAINER_ROLE = ("pi-cicd.role", "ci-test")
TEST_CONTAINER_PREFIX = "pi-cicd-ci-test-"
DEFAULT_BUDGET = 4 * 10**9  # CI_DISK_BUDGET's default: see docs/pi/sd-cards.md
_KEPT_TAGS = ("latest",)
_KEPT_PREFIXES = ("ci-staging-",)
_CI_TAGS = ("ci-test", "latest")
_CI_PREFIXES = ("ci-test-", "ci-staging-")


@dataclass(frozen=True)
class EngineImage:
    """An image with ``OWNER_LABEL``: its tags, labels, when CI last tagged it, and its history's layers."""

    id: str
    tags: tuple[str, ...]
    labels: Mapping[str, str]
    last_used: float  # seconds since the epoch
    layers: tuple[tuple[str, int], ...] = ()  # (history entry id, bytes) of the entries the engine knows

    @property
    def owner(self) -> str:
        return self.labels.get(OWNER_LABEL, "")


@dataclass(frozen=True)
class EngineContainer:
    """A test container of CI's (``TEST_CONTAINER_ROLE``, named ``TEST_CONTAINER_PREFIX``...); ``owner``: its
    image's ``OWNER_LABEL``."""

    id: str
    name: str
    owner: str
    running: bool
    size: int = 0


@dataclass(frozen=True)
class EngineDiskState:
    """One reading of the engine: the labelled images, CI's test containers, and the ids of every other image."""

    images: tuple[EngineImage, ...] = ()
    containers: tuple[EngineContainer, ...] = ()
    others: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Removal:
    """One thing to remove: a container (by id) or an image (by its CI tags, or by id when it has none)."""

    kind: str  # "container" or "image"
    references: tuple[str, ...]
    freed: int  # bytes it frees, as counted here
    what: str  # for the log


@dataclass(frozen=True)
class Plan:
    removals: tuple[Removal, ...]
    before: int  # bytes CI holds now
    after: int  # bytes CI holds once every removal is done
    kept: tuple[str, ...] = field(default=())  # the always-kept references, for the log


def same_repository(one: str, other: str) -> bool:
    """``docker.io/me/app`` is ``me/app`` (how the engine writes Docker Hub's tags) and ``library/x`` is ``x``."""
    return _normal(one) == _normal(other)


def _normal(name: str) -> str:
    name = name.strip().lower()
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        name = name.removeprefix(prefix)
    return name.removeprefix("library/")


def _split(reference: str) -> tuple[str, str]:
    repository, sep, tag = reference.rpartition(":")
    if not sep or "/" in tag:
        return reference, ""
    return repository, tag


def is_ci_tag(reference: str, owner: str) -> bool:
    """Whether ``reference`` is a tag CI makes for the repository ``owner`` (versions are not: CI removes its
    own ``NAME:X.Y.Z`` at the end of each run, so one that is there is someone else's)."""
    repository, tag = _split(reference)
    return same_repository(repository, owner) and (tag in _CI_TAGS or tag.startswith(_CI_PREFIXES))


def is_kept_tag(reference: str) -> bool:
    """``latest`` and the staging tags: the last successful release of a repository."""
    tag = _split(reference)[1]
    return tag in _KEPT_TAGS or tag.startswith(_KEPT_PREFIXES)


def owned(state: EngineDiskState, repositories: Iterable[str]) -> list[EngineImage]:
    """The images of ``state`` that belong to these repositories and to nobody else (see the module's text)."""
    names = {_normal(name) for name in repositories}
    return [
        image for image in state.images
        if _normal(image.owner) in names and all(is_ci_tag(tag, image.owner) for tag in image.tags)
    ]


def weight(images: Iterable[EngineImage], foreign: Collection[str]) -> int:
    """The bytes of the layers these images have, each counted once, without the layers of ``foreign`` images."""
    layers: dict[str, int] = {}
    for image in images:
        for layer_id, size in image.layers:
            if layer_id not in foreign:
                layers[layer_id] = size
    return sum(layers.values())


def plan(
    state: EngineDiskState, repositories: Iterable[str], budget: int, busy: Collection[str] = ()
) -> Plan:
    """What to remove so that what CI owns of ``repositories`` weighs at most ``budget`` bytes: stopped test
    containers always, then images oldest first, never a kept one nor one of a ``busy`` repository."""
    names = {_normal(name) for name in repositories}
    busy_names = {_normal(name) for name in busy}
    ours = owned(state, names)
    ours_ids = {image.id for image in ours}
    # Someone else's images and their layers free nothing when CI's go (base images are known by their id only).
    theirs = [image for image in state.images if image.id not in ours_ids]
    foreign = state.others | {image.id for image in theirs} | {layer for image in theirs for layer, _ in image.layers}
    stopped = [c for c in state.containers if not c.running and _normal(c.owner) in names]
    removals = [Removal("container", (c.id,), c.size, f"test container {c.name}") for c in stopped]

    def protected(image: EngineImage) -> bool:
        return _normal(image.owner) in busy_names or any(is_kept_tag(tag) for tag in image.tags)

    remaining = list(ours)
    current = weight(remaining, foreign)
    before = current + sum(c.size for c in stopped)
    for image in sorted((image for image in ours if not protected(image)), key=lambda image: image.last_used):
        if current <= budget:
            break
        remaining.remove(image)
        after = weight(remaining, foreign)
        references = image.tags or (image.id,)
        what = ", ".join(image.tags) if image.tags else f"untagged {image.owner} image {image.id[7:19]}"
        removals.append(Removal("image", references, current - after, what))
        current = after
    kept = tuple(tag for image in ours if protected(image) for tag in image.tags)
    return Plan(tuple(removals), before, current, kept)


class DiskBudget:
    """``CI_DISK_BUDGET`` for one agent: the repositories it serves, which of them have a run in progress, and
    the pruning after each run (one at a time: two runs that end together would count the same bytes)."""

    def __init__(self, budget: int, repositories: Callable[[], Iterable[str]]) -> None:
        self.budget = budget
        self._repositories = repositories
        self._busy: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._pruning = threading.Lock()

    @contextmanager
    def running(self, repository: str) -> Iterator[None]:
        """While a run of ``repository`` is in progress, nothing of it is pruned (by another repository's run)."""
        with self._lock:
            self._busy[repository] += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy[repository] -= 1
                if self._busy[repository] <= 0:
                    del self._busy[repository]

    def enforce(self, engine: EngineDisk, log: loguru.Logger, *, finished: str | None = None) -> Plan | None:
        """Prune ``engine`` down to the budget, saying what went in ``log``; never raises (a run's outcome is
        decided already). ``finished``: the repository whose run just ended, which is not busy any more.
        Nothing is pruned while a run of another repository is in progress (None)."""
        with self._pruning:
            with self._lock:
                busy = sorted(name for name in self._busy if name != finished)
            if busy:
                # The classic builder fails a build whose cache parent is removed under it, and repositories
                # built from the same base share those parents: the last run to end prunes.
                log.info("disk budget: not checked now, a run of {} is in progress (the last run to end checks it)",
                         ", ".join(busy))
                return None
            try:
                state = engine.disk_state()
            except PiCicdError as exc:
                reason = exc.message if isinstance(exc, StepFailed) else str(exc)
                log.warning("disk budget: cannot read what CI holds on the engine, nothing pruned: {}", reason)
                return None
            chosen = plan(state, self._repositories(), self.budget, busy)
            limit = f"CI_DISK_BUDGET={format_size(self.budget)}"
            if not chosen.removals:
                log.info("disk budget: CI holds {} on the engine ({}); nothing to prune",
                         format_size(chosen.before), limit)
                return chosen
            for removal in chosen.removals:
                remove = engine.remove_container if removal.kind == "container" else engine.remove_image
                removed = [reference for reference in removal.references if remove(reference)]
                if len(removed) == len(removal.references):
                    log.info("disk budget: pruned {} ({})", removal.what, format_size(removal.freed))
                else:
                    log.warning("disk budget: could not prune {} (in use, or gone already)", removal.what)
            log.info("disk budget: CI held {} on the engine ({}); pruned down to {}, keeping the last release of "
                     "each repository", format_size(chosen.before), limit, format_size(chosen.after))
            return chosen
