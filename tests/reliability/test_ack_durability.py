"""A 202 is a promise: the agent killed the moment its last answer arrives still has every acknowledged run.

The run store commits with SQLite's ``synchronous=NORMAL`` (README, "Benchmarks"): a committed
delivery is in the WAL file, which survives the process being killed; only a power cut could lose
it, which a test on one machine cannot make.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from shared.runstore import RunStore
from tests.support.ci_agent_server import CiAgentProcess, StartAgent, push_payload
from tests.support.git_repos import GitProject

BURST = 40


@pytest.fixture
def silent_remote() -> Iterator[str]:
    """A git URL on loopback that never answers: the worker's first run waits there, the rest stay queued."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/origin.git"


def _deliver(agent: CiAgentProcess, index: int, project: GitProject) -> tuple[str, int, int]:
    # Release tags never supersede each other: every acknowledged delivery must stay a run of its own.
    sha = f"{index:040x}"
    raw = json.dumps(push_payload(project, sha, f"release {index}", ref=f"refs/tags/v1.0.{index}")).encode()
    delivery = str(uuid.uuid4())
    answer = httpx.post(f"{agent.url}/webhook", content=raw, headers=agent.headers(raw, delivery), timeout=30)
    agent.answers.append(answer.text)
    return delivery, answer.status_code, answer.json().get("run", 0)


@pytest.mark.reliability(
    f"{BURST} signed tag pushes at once, the agent SIGKILLed the moment the last 202 arrives, then started again",
    "every acknowledged delivery is in the run store with its delivery id; after the restart the run that "
    "was running is interrupted and the others are still queued",
)
def test_acknowledged_deliveries_survive_a_kill_right_after_the_answer(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    silent_remote: str,
    tmp_path: Path,
    observed: Callable[[str], None],
) -> None:
    agent = start_ci_agent(CI_REPO_URL=silent_remote)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda index: _deliver(agent, index, git_project), range(1, BURST + 1)))
    agent.process.kill()

    acknowledged = {delivery: run for delivery, status, run in answers if status == 202}
    with RunStore(tmp_path / "state" / "runs.sqlite3") as store:
        kept = {delivery: store.find_by_delivery(delivery) for delivery in acknowledged}
    lost = sorted(delivery for delivery, run in kept.items() if run is None or run.number != acknowledged[delivery])

    restarted = start_ci_agent(CI_REPO_URL=silent_remote)
    statuses = {run["number"]: run["status"] for run in restarted.runs()}
    interrupted = [number for number, status in statuses.items() if status == "interrupted"]
    observed(
        f"{len(acknowledged)} of {BURST} answered 202; {len(lost)} missing from the store after SIGKILL; "
        f"after the restart {len(interrupted)} interrupted, {list(statuses.values()).count('queued')} queued"
    )
    assert len(acknowledged) == BURST, answers
    assert lost == []
    # The worker had taken one run into its (hanging) checkout; the restarted one takes the next.
    assert len(interrupted) == 1
    assert sorted(statuses) == sorted(acknowledged.values())
    assert all(status in ("interrupted", "queued", "running") for status in statuses.values()), statuses
