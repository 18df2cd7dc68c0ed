"""The registry watcher: one poll is a function that returns a report; the loop and its timing sit apart.

A poll lists the tags (``tags/list``, free on Docker Hub), chooses the candidate, and only when there
is one asks for its digest with a ``HEAD`` (also free) and hands it to the deployer: an idle poll
never counts against a pull limit.

Before a deploy, the candidate's platforms are read from the registry (``PlatformCheck``): a release
with no image for this machine is quarantined at once, with one error line and one email, and the
running app stays; so is one whose pull Docker refuses with "no matching manifest for linux/amd64".
Quarantined versions are skipped until a newer release appears.

The loop never ends because of an error. Registry outages and 429s are retried with tenacity
(exponential, jittered, ``Retry-After`` honoured, capped) and logged once per streak; any other error
is logged (once per streak too) and the next poll comes at the usual interval. When Docker Hub says
few pulls are left in its window, polls are spread out so a deploy still has pulls to spend.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import tenacity
from loguru import logger

from cd_agent.candidate import choose_candidate
from cd_agent.platform_check import PlatformCheck, pull_platform_problem
from cd_agent.state import DeployState
from shared.backoff import wait_retry_after
from shared.errors import PiCicdError, RateLimited, RegistryUnavailable
from shared.registry import RateLimit

if TYPE_CHECKING:
    import loguru

    from cd_agent.apps import AppTarget
    from shared.notify import Notifier

# Backoff never waits more than ten intervals (an hour at most) unless the registry asks for longer.
BACKOFF_INTERVALS = 10
MAX_WAIT = 3600.0
# Polls come ``interval`` to ``interval * (1 + JITTER)`` apart, so many agents do not poll in step.
JITTER = 0.1
# Below this share of Docker Hub's allowance, polls are spread over what is left of the window.
LOW_RATE_LIMIT = 0.1
DOCKER_HUB_WINDOW = 21600.0


class TagSource(Protocol):
    """What the watcher needs from ``shared.registry.RegistryClient``."""

    @property
    def rate_limit(self) -> RateLimit | None: ...

    def list_tags(self) -> list[str]: ...

    def manifest_digest(self, tag: str) -> str | None: ...


class DeployResult(Protocol):
    """What the watcher reads from ``cd_agent.deployer.DeployReport``."""

    @property
    def outcome(self) -> str: ...

    @property
    def error(self) -> str | None: ...


class Deploys(Protocol):
    """What the watcher needs from ``cd_agent.deployer.Deployer``."""

    def deploy(self, version: str, *, digest: str | None = None, force: bool = False) -> DeployResult: ...


@dataclass(frozen=True)
class PollReport:
    """What one poll saw and did."""

    at: datetime
    tags: int
    deployed: str | None
    candidate: str | None = None
    digest: str | None = None
    deploy: DeployResult | None = None
    rate_limit: RateLimit | None = None
    # "1.2.0 has no linux/amd64 image; it offers linux/arm64": the candidate was quarantined for it
    unrunnable: str | None = None


@dataclass(frozen=True)
class RolloutOutcome:
    """What became of a candidate: ``deploy`` is None when it was refused before anything was pulled;
    ``unrunnable`` says why it was quarantined as a release this machine cannot run."""

    deploy: DeployResult | None
    unrunnable: str | None = None


class RollsOut(Protocol):
    """Takes a candidate to production: ``Rollout`` in this process, or ``cd_agent.child_deploys.ChildDeploys``
    in a short-lived child process (what ``cd-agent watch`` uses, so the idle watcher never loads Docker's SDK)."""

    def roll_out(self, version: str, digest: str, deployed: str | None) -> RolloutOutcome: ...


class Rollout:
    """A candidate's way to production: the platform check (a release this machine cannot run is quarantined,
    with one error line and one email, and nothing is pulled), then ``deployer.deploy``; Docker's own "no
    matching manifest" pull error quarantines it too. Registry outages of the check are raised (the poll is
    retried)."""

    def __init__(
        self,
        target: AppTarget,
        deployer: Deploys,
        state: DeployState,
        *,
        platforms: PlatformCheck | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self._target = target
        self._log = app_logger(target.name)
        self._deployer = deployer
        self._state = state
        self._platforms = platforms
        self._notifier = notifier

    def roll_out(self, version: str, digest: str, deployed: str | None) -> RolloutOutcome:
        problem = self._platforms.problem(version, digest) if self._platforms is not None else None
        if problem is not None:
            self._refuse(version, problem, deployed, email=True)
            return RolloutOutcome(None, problem)
        self._log.info("deploying {}", version)
        result = self._deployer.deploy(version, digest=digest)
        if result.outcome == "deployed":
            self._log.info("deployed {}", version)
        elif result.outcome != "noop":
            host = self._platforms.host() if self._platforms is not None else None
            problem = pull_platform_problem(version, result.error, host) if result.outcome == "failed" else None
            if problem is not None:
                # The deployer has already sent its "deploy of X failed" email: no second one.
                self._refuse(version, problem, deployed, email=False)
            else:
                self._log.warning("deploy of {} ended {}: {}", version, result.outcome, result.error)
        return RolloutOutcome(result, problem)

    def _refuse(self, version: str, problem: str, deployed: str | None, *, email: bool) -> None:
        """A release this machine cannot run: quarantined (skipped until a newer release appears), said once."""
        self._state.quarantine(version, f"platform: {problem}")
        keeps = f"{deployed} keeps running" if deployed else "nothing was running"
        self._log.error(
            "{}: not deploying it ({}); it is not tried again until a newer release appears", problem, keeps
        )
        if email and self._notifier is not None:
            from shared.notify import Email  # the watcher itself sends none: see cd_agent.child_deploys

            self._notifier.notify(Email(
                subject=f"[{self._target.name}] not deployed: {problem}",
                body=(
                    f"{problem}.\n\n"
                    f"{self._target.image.with_tag(version)} was not pulled and {keeps}.\n"
                    f"{version} is quarantined: it is not tried again until a newer release appears. Once an "
                    f"image for this machine is pushed under {version}, deploy it with "
                    f"`cd-agent deploy --app {self._target.name} {version} --force`.\n"
                ),
                kind="warning",
            ))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def poll_delay(interval: float, rate_limit: RateLimit | None, jitter: float) -> float:
    """Seconds until the next poll: the interval plus ``jitter`` (0..1) of ``JITTER``, stretched when
    Docker Hub's ``ratelimit-remaining`` is low so the remaining pulls last until the window resets."""
    delay = interval * (1 + JITTER * jitter)
    if rate_limit is None or rate_limit.limit <= 0:
        return delay
    if rate_limit.remaining >= rate_limit.limit * LOW_RATE_LIMIT:
        return delay
    window = float(rate_limit.window_seconds or DOCKER_HUB_WINDOW)
    spread = window / max(rate_limit.remaining, 1)
    return max(delay, min(spread, MAX_WAIT))


class Watcher:
    """Polls ``registry`` for new releases of ``target.image`` and has ``deployer`` roll them out.

    ``clock``, ``sleep`` and ``jitter`` (0..1) are injected so tests run the loop without waiting; the default
    sleep waits on the stop event, so a stop request ends a wait at once. Without ``platforms`` no platform
    is checked before a deploy; ``notifier`` sends the email about a release this machine cannot run.
    ``rollout`` takes the place of all three (``deployer`` is then unused and may be None): ``cd-agent watch``
    deploys in a child process (``cd_agent.child_deploys``).
    """

    def __init__(
        self,
        target: AppTarget,
        registry: TagSource,
        deployer: Deploys | None,
        state: DeployState,
        *,
        clock: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], None] | None = None,
        jitter: Callable[[], float] = random.random,
        platforms: PlatformCheck | None = None,
        notifier: Notifier | None = None,
        rollout: RollsOut | None = None,
    ) -> None:
        self.target = target
        self._log = app_logger(target.name)
        self._registry = registry
        if rollout is None:
            if deployer is None:
                raise ValueError("a Watcher needs a deployer or a rollout")
            rollout = Rollout(target, deployer, state, platforms=platforms, notifier=notifier)
        self._rollout = rollout
        self._state = state
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._constraint = target.constraint
        self._interval = target.poll_interval
        self._cap = max(self._interval, min(BACKOFF_INTERVALS * self._interval, MAX_WAIT))
        self._failing: str | None = None  # the kind of error of the current streak, None when healthy
        self._slowed = False
        self._failed_deploys = 0  # deploys in a row that ended "failed" (nothing swapped, not quarantined)

    def poll_once(self) -> PollReport:
        """List tags, choose a candidate, deploy it. Registry errors are raised to the caller."""
        now = self._clock()
        tags = self._registry.list_tags()
        current = self._state.current
        deployed = current.version if current is not None else None
        candidate = choose_candidate(
            tags, deployed, self._constraint, self._state.quarantined_versions, self.target.allow_prerelease
        )
        self._state.set_last_poll_at(now)
        self._state.set_last_error(None)
        report = PollReport(at=now, tags=len(tags), deployed=deployed, candidate=candidate)
        if candidate is None:
            self._log.debug("poll: {} tags, nothing newer than {}", len(tags), deployed or "nothing")
            return _with_rate_limit(report, self._registry.rate_limit)
        digest = self._registry.manifest_digest(candidate)
        if digest is None:
            # Listed but gone (deleted between the two calls, or a push still in flight): next poll.
            self._log.warning("tag {} is listed but has no manifest yet; trying again next poll", candidate)
            return _with_rate_limit(report, self._registry.rate_limit)
        self._log.info("new release {} ({}) above {}", candidate, digest, deployed or "nothing")
        outcome = self._rollout.roll_out(candidate, digest, deployed)
        return PollReport(
            at=now, tags=len(tags), deployed=deployed, candidate=candidate, digest=digest, deploy=outcome.deploy,
            rate_limit=self._registry.rate_limit, unrunnable=outcome.unrunnable,
        )

    def run_forever(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set. Returns only then; no error ends the loop."""
        sleep = self._sleep if self._sleep is not None else _waiting_on(stop)
        self._log.info(
            "watching {} every {:g}s{}", self.target.image.name, self._interval,
            f" (constraint {self._constraint})" if self._constraint else "",
        )
        while not stop.is_set():
            delay = self._cycle(stop, sleep)
            if stop.is_set():
                break
            self._record_next_poll(delay)
            sleep(delay)
        self._log.info("watcher stopped")

    def _cycle(self, stop: threading.Event, sleep: Callable[[float], None]) -> float:
        """One poll, retried through registry outages; returns the seconds to wait before the next."""
        backoff = tenacity.wait_exponential_jitter(
            multiplier=self._interval, max=self._cap, jitter=self._interval * JITTER
        )
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RegistryUnavailable),
            # a Retry-After may ask for more than the cap of our own backoff; an hour at most
            wait=wait_retry_after(backoff, cap=max(self._cap, MAX_WAIT)),
            stop=tenacity.stop_when_event_set(stop),
            sleep=sleep,
            before_sleep=self._backing_off,
            reraise=True,
        )
        try:
            report = retrying(self.poll_once)
        except RegistryUnavailable:
            return 0.0  # stopped while backing off
        except PiCicdError as exc:
            self._failed(type(exc).__name__ + str(exc), "poll failed: {}; next poll in {:g}s", exc, None)
            return self._interval
        except Exception as exc:
            self._failed(type(exc).__name__ + str(exc), "unexpected error in the watcher: {!r}; next poll in {:g}s",
                         exc, exc)
            return self._interval
        if self._failing is not None:
            self._log.info("registry reachable again: {} tags, polling every {:g}s", report.tags, self._interval)
            self._failing = None
        return max(self._next_delay(report.rate_limit), self._after_deploy(report))

    def _after_deploy(self, report: PollReport) -> float:
        """A deploy that failed before any swap (pull refused, Docker away) is not quarantined, so the
        next poll would try it again at once, with another failure email: back off instead."""
        if report.unrunnable is not None:
            self._failed_deploys = 0  # quarantined: the next poll does not try it again
            return 0.0
        if report.deploy is None:
            return 0.0
        if report.deploy.outcome != "failed":
            self._failed_deploys = 0
            return 0.0
        self._failed_deploys += 1
        delay = min(self._interval * 2.0 ** self._failed_deploys, self._cap)
        self._log.info("deploy of {} failed {} time(s) in a row; next try in {:g}s", report.candidate,
                    self._failed_deploys, delay)
        return delay

    def _backing_off(self, retry_state: tenacity.RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        what = "registry rate limit" if isinstance(error, RateLimited) else "registry unreachable"
        if self._failing != "registry":
            self._failing = "registry"
            self._log.warning("{}: {}; backing off (next try in {:.1f}s)", what, error, wait)
        else:
            self._log.debug("{} (attempt {}): {}; next try in {:.1f}s", what, retry_state.attempt_number, error, wait)
        self._record_error(f"{what}: {error}")
        self._record_next_poll(wait)

    def _failed(self, kind: str, message: str, error: BaseException, traceback: BaseException | None) -> None:
        self._record_error(f"{type(error).__name__}: {error}")
        if self._failing == kind:
            self._log.debug(message, error, self._interval)
            return
        self._failing = kind
        self._log.opt(exception=traceback).error(message, error, self._interval)

    def _next_delay(self, rate_limit: RateLimit | None) -> float:
        delay = poll_delay(self._interval, rate_limit, self._jitter())
        slowed = delay > self._interval * (1 + JITTER)
        if slowed and not self._slowed and rate_limit is not None:
            self._log.warning(
                "registry rate limit: {} of {} pulls left; polling every {:.0f}s until it recovers",
                rate_limit.remaining, rate_limit.limit, delay,
            )
        elif self._slowed and not slowed:
            self._log.info("registry rate limit recovered; polling every {:g}s again", self._interval)
        self._slowed = slowed
        return delay

    # The state only feeds `cd-agent status`; failing to write it must not stop the watching.

    def _record_next_poll(self, delay: float) -> None:
        try:
            self._state.set_next_poll_at(self._clock() + timedelta(seconds=delay))
        except PiCicdError as exc:
            self._log.warning("could not record the next poll in the deploy state: {}", exc)

    def _record_error(self, error: str) -> None:
        try:
            self._state.set_last_error(error)
        except PiCicdError as exc:
            self._log.warning("could not record the error in the deploy state: {}", exc)


def app_logger(name: str) -> loguru.Logger:
    """The logger of one app's watcher: its lines start ``[NAME]`` (one agent watches many apps)."""
    prefix = f"[{name}] "

    def named(record: loguru.Record) -> None:
        record["message"] = prefix + record["message"]

    return logger.bind(app=name).patch(named)


def _waiting_on(stop: threading.Event) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    return sleep


def _with_rate_limit(report: PollReport, rate_limit: RateLimit | None) -> PollReport:
    return replace(report, rate_limit=rate_limit)
