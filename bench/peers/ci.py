"""The CI side: ``ci-agent serve`` beside Debian's ``webhook`` running shell scripts.

Both listen on loopback, check the same HMAC-SHA256 signature over the same GitHub push payloads
(``tests/fixtures/github``), and work on the same git project (``tests/support/git_repos``) and
registry. The shell scripts are what the seed's "webhook + script" shape would run: one appends the
delivery to a queue file (a delivery that queues a run), one does the pipeline's steps (fetch and
check out the commit, build the ``test`` stage and run the tests in it, build, push the version and
``latest``) with Docker's legacy builder, the one the Docker SDK drives.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from bench import ack_latency
from bench.peers.procs import Daemon
from bench.peers.table import Row
from bench.pipeline_overhead import step_spans
from ci_agent.signature import sign
from tests.support.ci_agent_server import WEBHOOK_SECRET, CiAgentProcess, launch_ci_agent, push_payload
from tests.support.git_repos import GitProject
from tests.support.ports import free_port, port_open

PIPELINE_SCRIPT = """#!/bin/sh
# The pipeline by hand: the steps ci-agent runs for a push, nothing else (each step's end is noted
# in steps-DELIVERY, for the breakdown).
set -e
sha=$1 delivery=$2 here=$(dirname "$0")
image=$(cat "$here/image") work="$here/work"
trap '[ -e "$here/done-$delivery" ] || echo "failed" > "$here/done-$delivery"' EXIT
step() { echo "$1 $(date +%s.%N)" >> "$here/steps-$delivery"; }
step start
export DOCKER_BUILDKIT=0
if [ ! -d "$work/.git" ]; then git clone -q "$(cat "$here/repo")" "$work"; fi
cd "$work"
git fetch -q origin "$sha"
git checkout -q --force "$sha"
step checkout
old=$(docker image inspect -f '{{.Id}}' "$image:ci-test" 2>/dev/null || true)
docker build -q --target test -t "$image:ci-test" . > /dev/null
# The replaced test image goes, as ci-agent removes its own (else it stays behind untagged).
if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$image:ci-test")" ]; then
    docker rmi "$old" > /dev/null 2>&1 || true
fi
docker run --rm "$image:ci-test" sh -c 'sh /tests/run.sh' > /dev/null
step test
count=$(( $(cat "$here/count" 2>/dev/null || echo 0) + 1 )); echo "$count" > "$here/count"
docker build -q -t "$image:0.1.$count" -t "$image:latest" . > /dev/null
step build
docker push -q "$image:0.1.$count" > /dev/null
docker push -q "$image:latest" > /dev/null
step push
date +%s.%N > "$here/done-$delivery"
"""


def hooks_json(directory: Path, hook: str, script: str) -> Path:
    """A webhook hooks file: ``hook`` runs ``script SHA DELIVERY`` for a signed push to ``main``."""
    path = directory / f"{hook}.sh"
    path.write_text(script)
    path.chmod(0o755)
    hooks = [{
        "id": hook,
        "execute-command": str(path),
        "command-working-directory": str(directory),
        "response-message": "queued",
        "pass-arguments-to-command": [
            {"source": "payload", "name": "after"},
            {"source": "header", "name": "X-GitHub-Delivery"},
        ],
        "trigger-rule": {"and": [
            {"match": {"type": "payload-hmac-sha256", "secret": WEBHOOK_SECRET,
                       "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}},
            {"match": {"type": "value", "value": "refs/heads/main", "parameter": {"source": "payload", "name": "ref"}}},
        ]},
    }]
    hooks_file = directory / f"{hook}.json"
    hooks_file.write_text(json.dumps(hooks, indent=2))
    return hooks_file


@dataclass
class Webhook:
    """``webhook`` (adnanh/webhook) serving one hook on a loopback port."""

    daemon: Daemon
    url: str

    @classmethod
    def start(cls, binary: str, directory: Path, hook: str, script: str) -> Webhook:
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        hooks = hooks_json(directory, hook, script)
        daemon = Daemon([binary, "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)],
                        directory / "webhook.log")
        daemon.wait_for(lambda: port_open(port), timeout=20, what="webhook listening")
        return cls(daemon, f"http://127.0.0.1:{port}/hooks/{hook}")


def signed(payload: dict[str, Any], delivery: str | None = None) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(payload).encode()
    return raw, {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(SecretStr(WEBHOOK_SECRET), raw),
    }


def start_agent(root: Path, project: GitProject, image: str, **overrides: str) -> CiAgentProcess:
    root.mkdir(parents=True, exist_ok=True)
    return launch_ci_agent(root, project, image, free_port(), free_port(), **overrides)


# ack latency


def measure_ack(row: Row, rounds: int, count: int) -> None:
    """p99 (ms) of ``count`` deliveries per round, by :func:`bench.ack_latency.round_of`, for both tools.

    The same measurement as ``python -m bench.ack_latency``: a fresh server each round, warmed up
    first; ``ci-agent serve``'s worker parked in its first run (every delivery only queues one),
    ``webhook`` checking the signature and running ``/bin/true``.
    """
    payload = ack_latency.PAYLOAD.read_bytes()
    for index in range(rounds):
        # Alternating which goes first, so a change in the machine's load hits both alike.
        order = [("ours", "ci-agent"), ("theirs", "webhook")]
        for side, tool in order if index % 2 == 0 else order[::-1]:
            row.mark_load()
            latencies = ack_latency.round_of(tool, count, payload)
            getattr(row, side).append(1000 * ack_latency.percentile(latencies, 0.99))
    row.mark_load()


# one pipeline run


def pipeline_webhook(binary: str, directory: Path, project: GitProject, image: str) -> Webhook:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "image").write_text(image)
    (directory / "repo").write_text(project.url)
    return Webhook.start(binary, directory, "pipeline", PIPELINE_SCRIPT)


def iso_seconds(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


STEPS = ("checkout", "test", "build", "push")


def agent_steps(log: str) -> dict[str, float]:
    """Seconds each step of a pi-cicd run took, from the run log's UTC millisecond stamps."""
    return {step: ended - began for step, (began, ended) in step_spans(log).items()}


def shell_steps(text: str) -> dict[str, float]:
    """Seconds each step of the shell pipeline took, from its ``STEP EPOCH`` lines (one per step's end)."""
    marks = [(name, float(at)) for name, at in (line.split() for line in text.splitlines() if line.strip())]
    return {name: at - before for (_, before), (name, at) in zip(marks, marks[1:], strict=False)}


@dataclass
class PipelineRun:
    seconds: float
    steps: dict[str, float]


def run_ours(agent: CiAgentProcess, project: GitProject, index: int) -> PipelineRun:
    """Seconds from sending a push delivery to the run's end (its ``finished_at``), for a new commit."""
    sha = project.commit({"www/index.html": f"<p>hello {index} from pi-cicd</p>\n"}, f"fix: change {index}")
    project.push()
    raw, headers = signed(push_payload(project, sha, f"fix: change {index}"))
    began = time.time()
    response = httpx.post(f"{agent.url}/webhook", content=raw, headers=headers, timeout=30)
    if response.status_code != 202:
        raise RuntimeError(f"ci-agent answered {response.status_code}: {response.text}")
    run = agent.wait_finished(response.json()["run"], timeout=180)
    if run["status"] != "succeeded":
        raise RuntimeError(f"the pi-cicd run ended {run['status']}: {agent.log_of(run['number'])[-2000:]}")
    return PipelineRun(iso_seconds(run["finished_at"]) - began, agent_steps(agent.log_of(run["number"])))


def run_theirs(hook: Webhook, directory: Path, project: GitProject, index: int) -> PipelineRun:
    """Seconds from sending a push delivery to the pipeline script's last line, for a new commit."""
    sha = project.commit({"www/index.html": f"<p>hello {index} from the shell</p>\n"}, f"fix: change {index}")
    project.push()
    delivery = str(uuid.uuid4())
    raw, headers = signed(push_payload(project, sha, f"fix: change {index}"), delivery)
    began = time.time()
    response = httpx.post(hook.url, content=raw, headers=headers, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")
    done = directory / f"done-{delivery}"
    hook.daemon.wait_for(lambda: done.exists() and done.read_text().strip(), timeout=180,
                         what="the shell pipeline to finish")
    ended = done.read_text().strip()
    if ended == "failed":
        raise RuntimeError(f"the shell pipeline failed; run {directory / 'pipeline.sh'} {sha} x by hand to see why")
    return PipelineRun(float(ended) - began, shell_steps((directory / f"steps-{delivery}").read_text()))


def measure_pipeline(rows: dict[str, Row], agent: CiAgentProcess, hook: Webhook, directory: Path,
                     project: GitProject, rounds: int) -> None:
    """``rows``: ``total`` and any of :data:`STEPS`, filled with the runs' seconds."""
    # One run each first, not counted: the first clone and the first build of the cached stages.
    run_ours(agent, project, 0)
    run_theirs(hook, directory, project, 0)
    for index in range(1, rounds + 1):
        for side in ("ours", "theirs") if index % 2 else ("theirs", "ours"):
            for row in rows.values():
                row.mark_load()
            if side == "ours":
                run = run_ours(agent, project, index)
            else:
                run = run_theirs(hook, directory, project, index)
            for name, row in rows.items():
                value = run.seconds if name == "total" else run.steps.get(name)
                if value is not None:
                    getattr(row, side).append(value)
    for row in rows.values():
        row.mark_load()
