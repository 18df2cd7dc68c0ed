"""``ci-agent serve`` as a real process, driven with signed deliveries; its secrets registered for the scan.

``start_ci_agent(**env_overrides)`` starts an agent on a loopback port over a git project, the
session registry and tmp_path; every answer it gives is handed to the secrets scan at teardown.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from pydantic import SecretStr

from ci_agent.signature import sign
from shared.registry import RegistryClient, parse_image_ref
from tests.support.agent_process import AgentProcess
from tests.support.docker_env import DockerJanitor, unique
from tests.support.git_repos import GitProject
from tests.support.payloads import GITHUB_PAYLOADS as PAYLOADS
from tests.support.ports import free_port
from tests.support.registry_server import RegistryServer

WEBHOOK_SECRET = "whsec-reliability-7Hq2-never-shown"
SMTP_PASSWORD = "smtp-reliability-Kp8w-never-shown"
GITHUB_REPO = "Codertocat/Hello-World"
FINISHED = ("succeeded", "failed", "superseded", "interrupted")


def gated_test_script(gate: Path) -> str:
    """A test suite that waits until the test creates ``gate``: a run that stays in progress on demand."""
    return f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.05; done\necho gated tests passed\n"


def push_payload(project: GitProject, sha: str, message: str, ref: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / "push_with-new-branch.payload.json").read_text())
    data["ref"] = ref or f"refs/heads/{project.branch}"
    data["after"] = sha
    data["before"] = "0" * 40
    data["head_commit"]["id"] = sha
    data["head_commit"]["message"] = message
    data["commits"] = [{**data["commits"][0], "id": sha, "message": message}] if data.get("commits") else []
    return data


def registry_tags(image_name: str) -> list[str]:
    with RegistryClient(parse_image_ref(image_name)) as client:
        return sorted(client.list_tags())


class CiAgentProcess:
    """A running ``ci-agent serve`` plus what a test needs to talk to it."""

    def __init__(self, process: AgentProcess, port: int, log_dir: Path, dashboard_port: int) -> None:
        self.process = process
        # The public listener (webhook, health, badge) and the private one (dashboard, run API).
        self.url = f"http://127.0.0.1:{port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        self.log_dir = log_dir
        self.answers: list[str] = []

    def wait_ready(self) -> None:
        self.process.wait_until(lambda: httpx.get(f"{self.url}/healthz").status_code == 200, what="ci-agent ready")

    @staticmethod
    def headers(raw: bytes, delivery: str | None = None, *, event: str = "push", signed: bool = True) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        }
        if signed:
            headers["X-Hub-Signature-256"] = sign(SecretStr(WEBHOOK_SECRET), raw)
        return headers

    def deliver(
        self, body: dict[str, Any] | bytes, *, event: str = "push", delivery: str | None = None, signed: bool = True
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = self.headers(raw, delivery, event=event, signed=signed)
        response = httpx.post(f"{self.url}/webhook", content=raw, headers=headers, timeout=10)
        self.answers.append(response.text)
        return response

    def run(self, number: int) -> dict[str, Any]:
        response = httpx.get(f"{self.dashboard_url}/runs/{number}", timeout=10)
        self.answers.append(response.text)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def runs(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.dashboard_url}/runs", params={"limit": 1000}, timeout=10)
        self.answers.append(response.text)
        data: list[dict[str, Any]] = response.json()
        return data

    def wait_finished(self, number: int, timeout: float = 90) -> dict[str, Any]:
        self.process.wait_until(
            lambda: self.run(number)["status"] in FINISHED, timeout=timeout, what=f"run {number} to finish"
        )
        return self.run(number)

    def wait_status(self, number: int, status: str, timeout: float = 60) -> None:
        self.process.wait_until(
            lambda: self.run(number)["status"] == status, timeout=timeout, what=f"run {number} {status}"
        )

    def wait_all_finished(self, expected: int, timeout: float = 90) -> list[dict[str, Any]]:
        def done() -> bool:
            runs = self.runs()
            return len(runs) == expected and all(run["status"] in FINISHED for run in runs)

        self.process.wait_until(done, timeout=timeout, what=f"{expected} runs finished")
        return self.runs()

    def log_of(self, number: int) -> str:
        path = self.run(number).get("log_path")
        return Path(path).read_text(errors="replace") if path and Path(path).exists() else ""


def launch_ci_agent(
    root: Path, git_project: GitProject, image: str, port: int, dashboard_port: int | None = None, **overrides: str
) -> CiAgentProcess:
    """``ci-agent serve`` with logs and state under ``root``, ready to answer (webhook on ``port``)."""
    dashboard_port = dashboard_port or free_port()
    env = {
        "CI_REPO_URL": git_project.url,
        "CI_BRANCH": git_project.branch,
        "CI_GITHUB_REPO": GITHUB_REPO,
        "CI_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "CI_IMAGE": image,
        "CI_TEST_COMMAND": "sh /tests/run.sh",
        "CI_HOST": "127.0.0.1",
        "CI_PORT": str(port),
        "CI_DASHBOARD_PORT": str(dashboard_port),
        "LOG_DIR": str(root / "logs"),
        "STATE_DIR": str(root / "state"),
        "SMTP_PASSWORD": SMTP_PASSWORD,
        **overrides,
    }
    process = AgentProcess("ci_agent", ["serve"], env, root).start()
    agent = CiAgentProcess(process, port, root / "logs", dashboard_port)
    agent.wait_ready()
    return agent


class StartAgent(Protocol):
    def __call__(self, **overrides: str) -> CiAgentProcess: ...


@pytest.fixture
def ci_image_name(registry: RegistryServer, docker_janitor: DockerJanitor) -> Iterator[str]:
    name = f"{registry.host}/{unique('rel')}/app"
    yield name
    for tag in ("latest", "ci-test", "0.1.0", "0.1.1", "0.1.2", "0.2.0"):
        docker_janitor.images.add(f"{name}:{tag}")


@pytest.fixture
def start_ci_agent(
    tmp_path: Path,
    git_project: GitProject,
    ci_image_name: str,
    secret: Callable[[str], str],
    produced: Callable[[str, str | bytes], None],
) -> Iterator[StartAgent]:
    agents: list[CiAgentProcess] = []
    # Fixed for the test: an agent restarted by the test answers where the first one did.
    port = free_port()
    dashboard_port = free_port()
    for value in (WEBHOOK_SECRET, SMTP_PASSWORD):
        secret(value)

    def start(**overrides: str) -> CiAgentProcess:
        agent = launch_ci_agent(tmp_path, git_project, ci_image_name, port, dashboard_port, **overrides)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.process.stop()
        for answer in agent.answers:
            produced(f"answer of {agent.url}", answer)
