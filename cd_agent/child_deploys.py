"""The watcher's side of a deploy in a child process: ``cd-agent watch`` starts ``python -m cd_agent.deploy_child``
for the start-up reconcile and for each release it deploys, and reads the outcome from the child's stdout.

Why: an idle watcher needs the registry, the state and the log, nothing else; the Docker SDK (with
``requests``), the deployer, the proxy and the email machinery are a deploy's business. Imported into the
long-lived process they would stay resident for good (CPython seldom hands freed memory back to the OS),
so they live only in the child, which exits when the deploy is done.

The child keeps everything a deploy had before: the deploy lock, the journal, the run and its log file,
the emails. It dies with the watcher (``PR_SET_PDEATHSIG``), so a SIGKILLed watcher is a crash of the deploy
as before, reconciled at the next start. A child that ends without an outcome (killed, out of memory) is
a failed deploy: the watcher logs it, reconciles at once in a new child, and backs off as after any failure.

A child's start is mostly its imports (the Docker SDK, pydantic's models): 0.4–0.6 s of a deploy on an
idle amd64 machine, 1.5 s at load 6, more on a Pi, all of it before the release is served. When a push
notification brings a poll forward, :meth:`ChildDeploys.prepare` starts the next child at once, while the
poll asks the registry: a release found by that poll (or its follow-ups) goes to a child that has done
its imports. A spare nobody needs exits by itself after ``SPARE_WAIT`` seconds (it has done nothing but
import), so an idle watcher still holds no child; hints start at most one per ``CD_HOOK_MIN_INTERVAL``.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cd_agent.errors import CdError
from cd_agent.settings import CdAgentSettings
from cd_agent.watcher import RolloutOutcome, app_logger
from shared.errors import PiCicdError, RateLimited, RegistryUnavailable

if TYPE_CHECKING:
    from cd_agent.apps import AppPaths, AppTarget
    from cd_agent.early_pull import EarlyPull

CHILD_MODULE = "cd_agent.deploy_child"
NO_JOB = 75  # cd_agent.deploy_child.NO_JOB: the child got no request and did nothing (not imported here:
# that module is the child's, with everything a deploy loads)


class ChildError(CdError):
    """An error the deploy process reported, with the exit code it has in the child. ``stage`` is ``open``
    when the child could not even build the agent (Docker out of reach, the state unreadable)."""

    def __init__(self, message: str, *, exit_code: int = 1, stage: str = "job") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.stage = stage


@dataclass(frozen=True)
class ChildDeploy:
    """The outcome of a deploy in the child (``cd_agent.watcher.DeployResult``)."""

    outcome: str
    error: str | None = None


class ChildDeploys:
    """Runs the start-up reconcile and each deploy of one app in ``python -m cd_agent.deploy_child``.

    The child is handed the app's name, its ``target`` and the agent-wide ``settings`` as they were read
    and validated at start-up or at the last reload (pickled on its stdin), and reads no settings itself:
    a ``.env`` or apps file edited since does not apply half-way, and what a deploy reads itself
    (``CD_ENV_FILE``) is checked by the deploy, as before.
    """

    def __init__(
        self, settings: CdAgentSettings, target: AppTarget, *, siblings: Sequence[AppPaths] = (),
        python: str = sys.executable, early_pull: EarlyPull | None = None,
    ) -> None:
        self._settings = settings
        self._early_pull = early_pull
        self.target = target
        self._siblings = tuple(siblings)
        self._python = python
        self._log = app_logger(target.name)
        self._spare: subprocess.Popen[bytes] | None = None
        self._spare_lock = threading.Lock()

    def prepare(self) -> None:
        """Start the next deploy's child now (a hint: a release may be found within a second), unless one
        is already waiting. It does its imports and waits for its request (``cd_agent.deploy_child``).

        Call it from the app's watcher thread, as every child is started: the child's ``PR_SET_PDEATHSIG``
        fires when the thread that started it ends (a listener's request thread would kill it at once)."""
        with self._spare_lock:
            if self._spare is not None and self._spare.poll() is None:
                return
            self._spare = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        # stderr is ours: the child's console log lands where the watcher's does.
        return subprocess.Popen(
            [self._python, "-m", CHILD_MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def _take(self) -> subprocess.Popen[bytes]:
        """The spare child when one is waiting, else a new one."""
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None and spare.poll() is None:
            return spare
        if spare is not None:
            spare.communicate()  # ended (its wait ran out): reaped, and its pipes closed
        return self._start()

    def reconcile(self) -> str:
        """Finish or undo an interrupted deploy; returns what was done. Raises ``ChildError``: the child's
        error, or the child ending without an answer."""
        result = self._run({"job": "reconcile"})
        return str(result.get("done", ""))

    def roll_out(self, version: str, digest: str, deployed: str | None) -> RolloutOutcome:
        """``cd_agent.watcher.Rollout.roll_out`` in a child. Registry outages are raised as
        ``RegistryUnavailable`` (the poll is retried), other errors as ``ChildError``."""
        if self._early_pull is not None:
            self._early_pull.start(self.target, version)  # while the child starts (cd_agent/early_pull.py)
        try:
            result = self._run({"job": "roll_out", "version": version, "digest": digest, "deployed": deployed})
        except _ChildDied as died:
            self._log.error("deploy of {} failed: {}; reconciling", version, died)
            self._reconcile_after_a_kill()
            return RolloutOutcome(ChildDeploy("failed", str(died)))
        deploy = result.get("deploy")
        return RolloutOutcome(
            ChildDeploy(str(deploy["outcome"]), deploy.get("error")) if deploy is not None else None,
            result.get("unrunnable"),
        )

    def _reconcile_after_a_kill(self) -> None:
        # What a restarted agent would do first, without waiting for the next deploy.
        try:
            self.reconcile()  # logs what it did ("reconcile: undid the interrupted deploy of ...")
        except PiCicdError as exc:
            self._log.error("reconcile after the failed deploy failed: {}; the next deploy reconciles again", exc)

    def _run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Start the child with ``request`` on stdin, wait for it (a stop request lets it finish), return its
        answer or raise its error."""
        payload = pickle.dumps({
            **request, "app": self.target.name, "target": self.target, "settings": self._settings,
            "siblings": self._siblings, "parent": os.getpid(),
        })
        for _ in range(2):
            process = self._take()
            stdout, _ = process.communicate(payload)  # a closed stdin (a spare that just gave up) is ignored
            if process.returncode != NO_JOB:
                break
            # A spare that gave up waiting just as the request came: it did nothing; a new child does it.
        answer = _answer(stdout)
        if answer is None:
            raise _ChildDied(_ended(process.returncode))
        error = answer.get("error")
        if error is not None:
            raise _rebuilt(error)
        return answer


class _ChildDied(ChildError):
    """The child ended without an answer."""


def _answer(output: bytes) -> dict[str, Any] | None:
    lines = output.decode(errors="replace").strip().splitlines()
    if not lines:
        return None
    try:
        answer = json.loads(lines[-1])
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _ended(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the deploy process was killed by {name} before it finished"
    return f"the deploy process exited with code {returncode} without an outcome"


def _rebuilt(error: Mapping[str, Any]) -> PiCicdError:
    message = str(error.get("message", ""))
    if error.get("type") in ("RegistryUnavailable", "RateLimited"):
        cls = RateLimited if error.get("type") == "RateLimited" else RegistryUnavailable
        return cls(message, retry_after=error.get("retry_after"))
    return ChildError(message, exit_code=int(error.get("exit_code", 1)), stage=str(error.get("stage", "job")))
