#!/usr/bin/env python3
"""The agents' image HEALTHCHECK: works out which agent is PID 1 and asks it whether it is alive.

- ci-agent: ``GET http://127.0.0.1:$CI_PORT/healthz`` answers 200.
- cd-agent: ``cd-agent status --json`` works and the next poll is not overdue by more than
  ``PICICD_HEALTH_OVERDUE`` seconds (default 900: a deploy with its health wait delays the next poll)
  plus ``CD_STATE_FLUSH_INTERVAL`` (default 900: the watcher writes its poll bookkeeping that seldom).

Exit 0 healthy, 1 unhealthy (Docker's convention); the reason goes to stdout, which ``docker inspect`` shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path


def agent_of_pid1() -> str:
    argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    names = {Path(arg.decode(errors="replace")).name for arg in argv}
    for agent in ("ci-agent", "cd-agent"):
        if agent in names:
            return agent
    return ""


def check_ci() -> str | None:
    url = f"http://127.0.0.1:{os.environ.get('CI_PORT', '8000')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            status = int(response.status)
    except OSError as exc:
        return f"{url}: {exc}"
    return None if status == 200 else f"{url}: HTTP {status}"


def check_cd() -> str | None:
    try:
        completed = subprocess.run(
            ["cd-agent", "status", "--json"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cd-agent status: {exc}"
    if completed.returncode != 0:
        return f"cd-agent status exited {completed.returncode}: {completed.stderr.strip()[-300:]}"
    next_poll = json.loads(completed.stdout).get("next_poll_at")
    if not next_poll:
        return None  # no poll scheduled yet: the start period covers the first one
    overdue = (datetime.now(UTC) - datetime.fromisoformat(next_poll)).total_seconds()
    # The state file's next poll may be one CD_STATE_FLUSH_INTERVAL old: idle polls are not written.
    limit = float(os.environ.get("PICICD_HEALTH_OVERDUE", "900")) + float(
        os.environ.get("CD_STATE_FLUSH_INTERVAL") or "900"
    )
    return f"the poll due at {next_poll} is {overdue:.0f}s overdue" if overdue > limit else None


def main() -> int:
    agent = agent_of_pid1()
    if agent == "ci-agent":
        problem = check_ci()
    elif agent == "cd-agent":
        problem = check_cd()
    else:
        problem = "PID 1 is neither ci-agent nor cd-agent"
    print(problem or f"{agent} is healthy")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
