"""``python -m cd_agent.deploy_child``: one reconcile or one deploy for ``cd-agent watch``, then exit.

Started by ``cd_agent.child_deploys.ChildDeploys`` (see there for why). The request comes pickled on
stdin from the watcher (the same user; nothing else writes there): the app's name and target, the
agent-wide settings (validated by the watcher; nothing is read again here), its pid, and the job
(``reconcile``, or ``roll_out`` with ``version``, ``digest`` and ``deployed``). The answer is one JSON
line on stdout: ``{"done": ...}``, ``{"deploy": {"outcome", "error"} | null, "unrunnable": ...}`` or
``{"error": {"type", "message", "exit_code", "stage", "retry_after"}}``. Everything else the child says
goes to stderr, the watcher's console log.

A child may be started before its request is known (``ChildDeploys.prepare``, on a push notification):
it does its imports, the bulk of its start, then waits for the request. One that gets none within
``SPARE_WAIT`` seconds, or an empty stdin, exits with ``NO_JOB`` having done nothing.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import select
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO

# The Docker SDK imports its ssh transport, and with it paramiko and its cryptography, whenever paramiko
# is installed (the agents' image has it for the CI agent's CI_BUILD_DOCKER_HOST=ssh://). A deploy
# talks to a local engine: a None entry makes that import fail as if paramiko were absent, which the SDK
# allows. It cut ~0.2 s of CPU (a quarter of the imports) from every deploy's start on this amd64 machine,
# several times that on a Pi, and the deploy starts before the release is served. DOCKER_HOST=ssh://
# keeps paramiko; so does an import of this module into another program (a test session).
if __name__ == "__main__" and not os.environ.get("DOCKER_HOST", "").startswith("ssh://"):
    sys.modules.setdefault("paramiko", None)  # type: ignore[arg-type]

from loguru import logger

from cd_agent.agent import Agent, open_agent
from cd_agent.apps import AppTarget
from cd_agent.settings import CdAgentSettings
from cd_agent.watcher import Rollout
from shared.errors import PiCicdError, RegistryUnavailable
from shared.logs import configure_logging

_PR_SET_PDEATHSIG = 1
# A spare child (started on a hint, see the module docstring) waits this long for its request.
SPARE_WAIT = 15.0
NO_JOB = 75  # the exit code of a child that got no request and did nothing (EX_TEMPFAIL)


def _reconcile(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    return {"done": agent.deployer.reconcile()}


def _roll_out(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    rollout = Rollout(
        agent.target, agent.deployer, agent.state, platforms=agent.platforms(), notifier=agent.notifier
    )
    outcome = rollout.roll_out(str(request["version"]), str(request["digest"]), request.get("deployed"))
    deploy = outcome.deploy
    return {
        "deploy": None if deploy is None else {"outcome": deploy.outcome, "error": deploy.error},
        "unrunnable": outcome.unrunnable,
    }


JOBS: dict[str, Callable[[Agent, dict[str, Any]], dict[str, Any]]] = {"reconcile": _reconcile, "roll_out": _roll_out}


def main() -> int:
    # The answer goes to the real stdout; anything else printed there (a library's print) to stderr.
    _finish_on_signals()
    answer_stream = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    _die_with_parent()
    ready, _, _ = select.select([sys.stdin], [], [], SPARE_WAIT)
    if not ready:
        return NO_JOB
    try:
        request = pickle.load(sys.stdin.buffer)  # noqa: S301 - written by our parent, the watcher
    except EOFError:
        return NO_JOB  # a spare the watcher let go (or an empty stdin)
    if os.getppid() != int(request["parent"]):
        return 1
    settings: CdAgentSettings = request["settings"]
    target: AppTarget = request["target"]
    if target.name != request["app"]:
        return 1
    configure_logging("cd", settings.secret_values(), level=settings.log_level)
    _answer(answer_stream, _serve(settings, target, request))
    return 0


def _serve(settings: CdAgentSettings, target: AppTarget, request: dict[str, Any]) -> dict[str, Any]:
    stage = "open"
    try:
        # A deploy with Docker away fails inside its run, as it did under a watcher connected since its start.
        with open_agent(
            settings, target, siblings=request.get("siblings", ()),
            docker_away_fails_the_run=request["job"] == "roll_out",
        ) as agent:
            stage = "job"
            return JOBS[request["job"]](agent, request)
    except PiCicdError as exc:
        return {"error": _error(exc, stage)}
    except Exception as exc:
        logger.opt(exception=exc).error("unexpected error in the deploy process: {!r}", exc)
        return {"error": {"type": type(exc).__name__, "message": repr(exc), "exit_code": 1, "stage": stage}}


def _error(exc: PiCicdError, stage: str) -> dict[str, Any]:
    retry_after = exc.retry_after if isinstance(exc, RegistryUnavailable) else None
    return {
        "type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code, "stage": stage,
        "retry_after": retry_after,
    }


def _answer(stream: TextIO, answer: dict[str, Any]) -> None:
    stream.write(json.dumps(answer) + "\n")
    stream.flush()


def _die_with_parent() -> None:
    """SIGKILL this process when the watcher dies, as the deploy died with the agent when it ran inside it
    (the caller then checks that the watcher is still its parent: it may have died before this call)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the deploy outlives a killed watcher and holds the lock until it ends


def _finish_on_signals() -> None:
    """SIGTERM and SIGINT (systemd and a terminal signal the whole group) do not cut a deploy short: the
    watcher, which logs the signal, waits for this process as it waited for the deploy under way before.
    Nor does SIGHUP (the watcher's reload; a closed terminal). Ignored rather than logged: a handler that
    logs could land inside a log call of the deploy."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
