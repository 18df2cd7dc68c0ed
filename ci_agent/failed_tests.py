"""Replays of a failing push test nothing: commits whose tests failed are remembered, as releases are.

Anyone who has seen one signed delivery can send it again under a new ``X-GitHub-Delivery`` id (the
id is not signed), or press *Redeliver*: for a commit whose tests fail, every replay would run them
again, with another failure email and commit status each time. So when a run's test command fails
(exits non-zero), the run keeps ``details["tests_failed_with"]``: :func:`tests_key` of the settings
the tests ran with. A later push of the same commit to the same ref, while the test settings are the
same, queues nothing: the queue answers it as a duplicate of that run, with a reason, and there is
no test, no email and no status (``ci_agent/queue.py``).

What changes the outcome is a new commit or other test settings (``CI_TEST_COMMAND``,
``CI_TEST_RUNNER``, ``CI_TEST_TIMEOUT``, ``CI_BUILD_ARGS``, ``CI_PLATFORMS``/``CI_TEST_PLATFORMS``; in a
repos file, the repository's own keys, read from its ``RepoTarget``).
To test the same commit again on purpose, ``ci-agent run --ref SHA`` on the agent's machine runs it
(it does not go through the queue). Failures at any other step, a time-out, and interrupted runs are
not remembered: those are worth a retry, and *Redeliver* still is one.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ci_agent.payload import PushEvent
    from ci_agent.targets import RepoTarget
    from shared.runstore import Run, RunStore

DETAIL = "tests_failed_with"


def tests_key(target: RepoTarget) -> str:
    """What a commit's test outcome depends on besides the commit, as a short hash."""
    parts = {
        "command": target.test_command,
        "runner": target.test_runner,
        "timeout": target.test_timeout,
        "build_args": ",".join(f"{name}={value}" for name, value in target.build_args.items()),
    }
    # Added only when set, so the key of a repository without platforms stays what it was.
    if target.platforms or target.test_platforms:
        parts["platforms"] = f"{','.join(map(str, target.platforms))};{','.join(map(str, target.test_platforms))}"
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def earlier_failure(store: RunStore, kind: str, event: PushEvent, key: str, scope: str | None = None) -> Run | None:
    """The newest run of ``kind`` (and repository ``scope``) whose tests failed for ``event``'s ref and commit
    under the settings ``key``."""
    for run in store.find_failed(kind, event.ref, event.after, step="test", scope=scope):
        if run.details.get(DETAIL) == key:
            return run
    return None


def failure_reason(event: PushEvent, run: Run) -> str:
    """Why a push of an already failed commit queues nothing, and what to do instead."""
    again = event.tag if event.tag is not None else event.after
    return (
        f"the tests of {event.after[:12]} on {event.ref} failed in run {run.number} with the same test settings: "
        f"not tested again (push a new commit, or run `ci-agent run --ref {again}` on the agent's machine)"
    )
