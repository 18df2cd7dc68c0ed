"""One CI run: checkout → test → build → push, logged into the run's own file.

The pipeline holds the policy; every effect is a constructor argument behind a small interface
(``ci_agent/effects.py``: git, the image builder, the registry, the host test runner; plus the
store, the notifier and the clock), so the agent wires the real ones and the unit tests
(``tests/unit/test_pipeline_policy.py``) in-memory fakes. The run's bookkeeping (open, log file,
finish, email, log pruning) is ``shared.run_lifecycle``.

* A run on a nearly full disk (less than ``DISK_MIN_FREE`` free where Docker keeps its data) fails at
  once at step ``disk``, before the checkout: nothing is built or tagged (``shared/disk.py``).
* Each step is timed and logged (``step test started`` … ``step test finished in 3.2s``); the first
  failure stops the run: nothing after a failed step happens (no image is pushed after a failed test).
* Any error inside a step becomes ``StepFailed(step, ...)``: the run ends ``failed`` with
  ``failed_step`` and ``error`` set, and one email names the step and carries the log's tail.
* Replays release nothing: after checkout and before the tests, ``ci_agent/release_guard.py``
  checks the commit against the repository (still on the branch, not superseded by a newer queued
  commit, the tag still points at it) and the registry (not released yet, not older than the latest
  release). A run it stops ends ``superseded`` with ``details["reason"]``: no test, no email.
* An annotated tag push names the tag object in ``after``: the checkout peels it, and the run
  records, tests, builds and labels the commit it tags.
* The version is decided in the build step (the image is labelled with it) and checked against the
  registry's tags again just before the push, so an existing tag is never overwritten.
* Local images: the test image stays tagged ``NAME:ci-test`` and the release ``NAME:latest``, so the
  next build finds its layer cache; the ``NAME:X.Y.Z`` tag and replaced images are removed.
* After each run, whatever its outcome, ``CI_DISK_BUDGET`` prunes what CI built on the engine down to the
  budget (``ci_agent/disk_budget.py``), saying so in the run's log; it never changes the run's outcome.
* ``CI_PLATFORMS`` / ``CI_TEST_PLATFORMS`` (a repos file's ``platforms`` / ``test_platforms``, taken from
  the run's ``RepoTarget``): the test, build and push of those platforms are ``ci_agent/multiplatform.py``'s;
  the steps, their order and what a failure stops stay these.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ci_agent.builder import has_stage, run_host_command
from ci_agent.buildx import choose_builder
from ci_agent.disk_budget import TEST_CONTAINER_PREFIX, DiskBudget
from ci_agent.effects import HostRunner, ImageBuilder, ReleaseRegistry, Source
from ci_agent.errors import Step, StepFailed, TestsFailed
from ci_agent.failed_tests import DETAIL as FAILED_TESTS_DETAIL
from ci_agent.failed_tests import tests_key
from ci_agent.git import redact_url, strip_credentials
from ci_agent.host_env import host_test_environment
from ci_agent.multiplatform import MultiPlatform
from ci_agent.payload import ZERO_SHA, PushEvent
from ci_agent.release_guard import ReleaseGuard, RevisionCache, RunSkipped
from ci_agent.targets import RepoTarget
from ci_agent.versioning import VersionTaken, next_version, should_move_latest, taken_by
from shared.disk import DiskFloor
from shared.errors import PiCicdError
from shared.logs import tail
from shared.notify import Email, Notifier
from shared.registry import ImageRef
from shared.run_lifecycle import RunLifecycle, RunScope
from shared.runstore import Run, RunStore, utc_now
from shared.versions import Commit, highest_tag

if TYPE_CHECKING:
    import loguru

REVISION_LABEL = "org.opencontainers.image.revision"
SOURCE_LABEL = "org.opencontainers.image.source"
VERSION_LABEL = "org.opencontainers.image.version"
CREATED_LABEL = "org.opencontainers.image.created"
TEST_TAG = "ci-test"
LOG_TAIL_LINES = 60
DEFAULT_KEEP_LOGS = 200  # LOG_RETENTION_RUNS' default


class Pipeline:
    """Runs CI runs one at a time (the worker serialises them; the pipeline itself keeps no lock)."""

    def __init__(
        self,
        target: RepoTarget,
        store: RunStore,
        notifier: Notifier,
        git: Source,
        docker: ImageBuilder,
        registry: ReleaseRegistry,
        clock: Callable[[], datetime] = utc_now,
        *,
        host_runner: HostRunner = run_host_command,
        push_retry_wait: float = 2.0,
        report: Callable[[Run], None] = lambda _: None,
        keep_logs: int = DEFAULT_KEEP_LOGS,
        hidden: Callable[[], Iterable[str]] | None = None,
        disk: DiskFloor | None = None,
        budget: DiskBudget | None = None,
    ) -> None:
        self.report = report  # a finished run's commit status (ci_agent/commit_status.py); never raises
        self.target = target
        # DISK_MIN_FREE: a run does not start (nothing checked out, built or tagged) on a nearly full disk
        self.disk = disk
        # CI_DISK_BUDGET: one for the whole agent, shared by its repositories' pipelines
        self.budget = budget
        self.store = store
        self.notifier = notifier
        self.git = git
        self.docker = docker
        self.registry = registry
        self.host_runner = host_runner
        self.clock = clock
        self.image: ImageRef = target.image
        self.push_retry_wait = push_retry_wait
        self.scope = RunScope(target.name, target.paths.log_dir, keep_logs)
        self.lifecycle = RunLifecycle(store, notifier, clock)
        # The values a host-run test must not see in its environment: every secret of the agent.
        self._hidden = hidden if hidden is not None else target.secret_values
        # (ref, commit) that event_for_ref read from the remote, for the run of that event (see _steps).
        self._looked_up: tuple[str, str] | None = None
        # Distinguishes this agent's test containers from another agent's on the same dockerd.
        self._instance = uuid.uuid4().hex[:8]
        platforms, test_platforms = target.platforms, target.test_platforms
        self.platforms = MultiPlatform(
            docker, registry, self.image, platforms, test_platforms,
            choose=lambda step: choose_builder(
                target.builder, target.build_host, step=step, timeout=target.build_timeout),
        ) if (platforms or test_platforms) else None
        self.guard = ReleaseGuard(
            repo_url=target.repo_url, git=git, registry=registry, store=store, workdir=self.checkout_dir,
            revisions=RevisionCache(target.paths.revisions_file), on_superseded=report, scope=target.name,
        )

    @property
    def checkout_dir(self) -> Path:
        return self.target.paths.checkout_dir

    def event_for_ref(self, ref: str | None = None) -> PushEvent:
        """A push event for ``ci-agent run --ref REF`` (default: the tracked branch's head)."""
        name, sha = self.git.lookup(self.target.repo_url, ref or self.target.branch)
        branch = name.removeprefix("refs/heads/") if name and name.startswith("refs/heads/") else None
        tag = name.removeprefix("refs/tags/") if name and name.startswith("refs/tags/") else None
        self._looked_up = (name, sha) if name else None
        return PushEvent(
            ref=name or sha, branch=branch, tag=tag, after=sha, before=ZERO_SHA, deleted=False,
            repository=self.target.github_repo or "", pusher="ci-agent run",
        )

    def execute(self, run: Run, event: PushEvent) -> Run:
        """Run every step for ``event`` and record the outcome in the store; returns the finished run."""
        if self.budget is None:
            return self._execute(run, event)
        with self.budget.running(self.image.name):
            return self._execute(run, event)

    def _execute(self, run: Run, event: PushEvent) -> Run:
        failure: StepFailed | None = None
        skipped: RunSkipped | None = None
        version: str | None = None
        with self.lifecycle.open(run, self.scope, commit=event.after, ref=event.ref) as opened:
            run, log, path = opened.run, opened.log, opened.log_path
            log.info(
                "run {} started: commit {} ({}) of {}", run.number, event.after, event.ref,
                redact_url(self.target.repo_url),
            )
            try:
                version = self._steps(run, event, log)
            except StepFailed as exc:
                failure = exc
                log.error("run {} failed at step {}: {}", run.number, exc.step, exc.message)
            except RunSkipped as exc:
                skipped = exc
                log.warning("run {} releases nothing: {}", run.number, exc.verdict.reason)
            else:
                log.info("run {} succeeded: pushed {}", run.number, self.image.with_tag(version))
            if self.budget is not None:
                self.budget.enforce(self.docker, log, finished=self.image.name)
        if skipped is not None:
            run = self.lifecycle.finish(run, self.scope, status="superseded", details=self._skipped(run, skipped))
        elif failure is not None:
            run = self.lifecycle.finish(
                run, self.scope, status="failed", failed_step=failure.step, error=failure.message,
                email=self._failure_email(run, event, failure, path), **self._remember_failed_tests(run, failure),
            )
        else:
            run = self.lifecycle.finish(run, self.scope, status="succeeded", version=version)
        self.report(run)
        return run

    def _skipped(self, run: Run, skipped: RunSkipped) -> dict[str, Any]:
        verdict = skipped.verdict
        current = self.store.get(run.number)
        details = dict(current.details if current is not None else {})
        details["reason"] = verdict.reason
        if verdict.already_released is not None:
            details["already_released"] = verdict.already_released
        if verdict.superseded_by is not None:
            details["superseded_by"] = verdict.superseded_by
        return details

    def _remember_failed_tests(self, run: Run, failure: StepFailed) -> dict[str, Any]:
        """The details that keep a replay of this push from testing it again (ci_agent/failed_tests.py)."""
        current = self.store.get(run.number)
        if not isinstance(failure, TestsFailed) or current is None:
            return {}
        return {"details": {**current.details, FAILED_TESTS_DETAIL: tests_key(self.target)}}

    def fail(self, run: Run, message: str) -> Run:
        """Mark ``run`` failed outside any step (the worker's last resort when ``execute`` itself broke)."""
        run = self.lifecycle.finish(run, self.scope, status="failed", error=message)
        self.report(run)
        return run

    # -- the steps ---------------------------------------------------------------------------------

    def _steps(self, run: Run, event: PushEvent, log: loguru.Logger) -> str:
        checkout = self.checkout_dir
        # What event_for_ref just read from the remote for this very event: the guard need not ask again.
        looked_up, self._looked_up = self._looked_up, None
        remote_commit = looked_up[1] if looked_up == (event.ref, event.after) else None
        self.docker.prepare()  # the Docker SDK loads and connects while git works
        if self.disk is not None:
            low = self.disk.problem("checkout")
            if low is not None:
                log.error("step disk failed: {}", low)
                raise StepFailed("disk", low)
            if self.disk.unchecked:
                log.info("free space not checked (DISK_MIN_FREE): {}", self.disk.unchecked)
        with self._step("checkout", log):
            commit = self.git.checkout(self.target.repo_url, event.after, checkout)
            if commit != event.after:
                log.info("{} is an annotated tag object; it tags commit {}", event.after, commit)
                event = dataclasses.replace(event, after=commit)
                run = self.store.update(run.number, commit=commit)
            log.info("checked out {} into {}", commit, checkout)
            self.guard.check(run, event, commit, log, remote_commit=remote_commit)
        with self._step("test", log):
            if self.target.build_host is not None:
                log.info("this run builds on {}", self.docker.engine())
            self._test(run, checkout, log)
        decided: list[str] = []
        try:
            with self._step("build", log):
                version, existing = self._decide_version(event, checkout, log)
                decided.append(version)
                move_latest = should_move_latest(version, existing)
                self._build(event, checkout, version, move_latest, log)
            with self._step("push", log):
                self._push(version, move_latest, log)
            return version
        finally:
            for tag in decided:
                # The release stays reachable locally as `latest` (and in the registry by its version).
                self.docker.remove_image(self.image.with_tag(tag))

    @contextmanager
    def _step(self, step: Step, log: loguru.Logger) -> Iterator[None]:
        log.info("step {} started", step)
        began = time.monotonic()
        try:
            yield
        except RunSkipped:
            log.info("step {} stopped the run after {:.1f}s", step, time.monotonic() - began)
            raise
        except StepFailed as exc:
            log.error("step {} failed after {:.1f}s: {}", step, time.monotonic() - began, exc.message)
            if exc.step != step:
                raise StepFailed(step, exc.message) from exc
            raise
        except PiCicdError as exc:
            log.error("step {} failed after {:.1f}s: {}", step, time.monotonic() - began, exc)
            raise StepFailed(step, str(exc)) from exc
        except Exception as exc:
            log.opt(exception=exc).error("step {} failed after {:.1f}s with an unexpected error", step,
                                         time.monotonic() - began)
            raise StepFailed(step, f"unexpected error: {type(exc).__name__}: {exc}") from exc
        log.info("step {} finished in {:.1f}s", step, time.monotonic() - began)

    def _test(self, run: Run, checkout: Path, log: loguru.Logger) -> None:
        command = self.target.test_command
        timeout = self.target.test_timeout
        output = _printer(log, "test")
        if self.target.test_runner == "host":
            try:
                argv = shlex.split(command)
            except ValueError as exc:
                raise StepFailed("test", f"CI_TEST_COMMAND cannot be split into arguments: {exc}") from exc
            log.info("running {} in {} (time limit {:g}s)", argv, checkout, timeout)
            code = self.host_runner(argv, cwd=checkout, timeout=timeout, on_output=output, env=self._host_env())
        else:
            dockerfile = checkout / "Dockerfile"
            if not dockerfile.is_file():
                raise StepFailed("test", "the repository has no Dockerfile at its root")
            target = "test" if has_stage(dockerfile.read_text(errors="replace"), "test") else None
            if self.platforms is not None:
                self.platforms.test(
                    checkout, command, target=target, timeout=timeout, buildargs=dict(self.target.build_args),
                    name=f"{TEST_CONTAINER_PREFIX}{self._instance}-run-{run.number}", log=log,
                )
                return
            test_image = self.image.with_tag(TEST_TAG)
            previous = self.docker.image_id(test_image)
            log.info("building the {} for the tests", "Dockerfile's `test` stage" if target else "image")
            image_id = self.docker.build(
                checkout, [test_image], target=target, buildargs=dict(self.target.build_args), on_output=output,
                step="test",
            )
            if previous is not None and previous != image_id:
                self.docker.remove_image(previous)
            log.info("running `sh -c {}` in a container of {} (time limit {:g}s)", shlex.quote(command),
                     test_image, timeout)
            code = self.docker.run_tests(
                test_image, command, timeout=timeout, on_output=output,
                name=f"{TEST_CONTAINER_PREFIX}{self._instance}-run-{run.number}",
            )
        if code != 0:
            raise TestsFailed(f"the test command `{command}` exited with code {code}")

    def _host_env(self) -> dict[str, str]:
        # The tests are the repository's code: a few harmless variables of the agent's, no secret.
        return host_test_environment(os.environ, self._hidden())

    def _decide_version(self, event: PushEvent, checkout: Path, log: loguru.Logger) -> tuple[str, list[str]]:
        existing = self.registry.list_tags()
        previous = highest_tag(existing)
        messages: list[Commit] = []
        if event.release_version is None and previous is not None:
            # The release guard has read it from the registry already (and keeps it): tags are never overwritten.
            revision = self.guard.release_revision(previous) or self.registry.image_labels(previous).get(REVISION_LABEL)
            messages = self.git.commits(checkout, revision, event.after)
            log.info("previous release {} was built from {}; {} commit(s) since", previous, revision or "?",
                     len(messages))
        try:
            version = next_version(
                existing, messages, initial=self.target.initial_version, git_tag_version=event.release_version,
                tag_style=self.target.tag_style,
            )
        except VersionTaken as exc:
            raise StepFailed("build", str(exc)) from exc
        log.info("this run releases version {}", version)
        return version, existing

    def _build(self, event: PushEvent, checkout: Path, version: str, move_latest: bool, log: loguru.Logger) -> None:
        labels = {
            REVISION_LABEL: event.after,
            SOURCE_LABEL: strip_credentials(self.target.repo_url),
            VERSION_LABEL: version,
            CREATED_LABEL: self.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if self.platforms is not None and self.platforms.platforms:
            self.platforms.build(checkout, labels, dict(self.target.build_args), log)
            return
        tags = [self.image.with_tag(version)]
        previous_latest = None
        if move_latest:
            tags.append(self.image.with_tag("latest"))
            previous_latest = self.docker.image_id(self.image.with_tag("latest"))
        image_id = self.docker.build(
            checkout, tags, labels=labels, buildargs=dict(self.target.build_args), on_output=_printer(log, "build")
        )
        log.info("built {} as {}", image_id, ", ".join(tags))
        if previous_latest is not None and previous_latest != image_id:
            self.docker.remove_image(previous_latest)

    def _push(self, version: str, move_latest: bool, log: loguru.Logger) -> None:
        # Runs are serialised, but another agent (or a person) may push to the same repository.
        clash = taken_by(version, self.registry.list_tags())
        if clash is not None:
            raise StepFailed("push", f"tag {clash} appeared in the registry during this run; it is never overwritten")
        if self.platforms is not None and self.platforms.platforms:
            self.platforms.push(version, move_latest, lambda tag: self._push_tag(tag, log), log)
            return
        for tag in [version, "latest"] if move_latest else [version]:
            self._push_tag(tag, log)

    def _push_tag(self, tag: str, log: loguru.Logger) -> str | None:
        log.info("pushing {}", self.image.with_tag(tag))
        for attempt in Retrying(
            stop=stop_after_attempt(self.target.push_attempts),
            wait=wait_exponential(multiplier=self.push_retry_wait, max=60),
            retry=retry_if_exception_type(StepFailed),
            reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    log.warning("push of {} failed; attempt {}", tag, attempt.retry_state.attempt_number)
                return self.docker.push(self.image.name, tag, on_output=_printer(log, "push"))
        return None  # not reached: the last attempt's error is raised

    def _failure_email(self, run: Run, event: PushEvent, failure: StepFailed, path: Path) -> Email:
        short = event.after[:12]
        # A repos file names each repository; the one repository of the environment keeps its subject.
        what = f"[{self.target.name}] run {run.number}" if self.target.from_file else f"CI run #{run.number}"
        body = "\n".join(
            [
                f"{what} failed at step {failure.step}.",
                "",
                f"Step:       {failure.step}",
                f"Error:      {failure.message}",
                f"Repository: {redact_url(self.target.repo_url)}",
                f"Ref:        {event.ref}",
                f"Commit:     {event.after}",
                f"Log file:   {path}",
                "",
                "Last lines of the log:",
                "",
                tail(path, LOG_TAIL_LINES),
            ]
        )
        subject = f"{what} failed at {failure.step}: {self.image.name} @ {short}"
        return Email(subject=subject, body=body, kind="failure")


def _printer(log: loguru.Logger, step: Step) -> Callable[[str], None]:
    def emit(line: str) -> None:
        log.info("[{}] {}", step, line)

    return emit
