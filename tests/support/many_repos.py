"""One ``ci-agent serve`` over several git projects (``CI_REPOS_FILE``), each pushing to its own image.

``three_repos`` makes the issue's set-up: ``web`` with a secret of its own, ``api`` and ``docs``
sharing an organisation secret; ``start_many(repos, **env)`` writes the repos file (0600) and starts
the agent as a real process on loopback ports; every answer it gives is handed to the secrets scan.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from pydantic import SecretStr

from ci_agent.signature import sign
from tests.support.agent_process import AgentProcess
from tests.support.ci_agent_server import CiAgentProcess, push_payload
from tests.support.docker_env import DockerJanitor, unique
from tests.support.git_repos import GitProject, make_git_project
from tests.support.ports import free_port
from tests.support.registry_server import RegistryServer

OWN_SECRET = "whsec-own-web-Q7k2-never-shown"
ORG_SECRET = "whsec-org-shared-M4p9-never-shown"
PASSING = "#!/bin/sh\necho host tests passed\n"
# No RUN step: a build starts no container, so it needs no network bridge and takes well under a second.
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY www/ /www/
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
"""


@dataclass
class Repo:
    """One repository of the agent: its table name, GitHub name, secret, git project and image."""

    name: str
    github_repo: str
    secret: str
    project: GitProject
    image: str
    extra: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        values: dict[str, Any] = {
            "repo_url": self.project.url,
            "github_repo": self.github_repo,
            "image": self.image,
            "webhook_secret": self.secret,
            "test_runner": "host",
            "test_command": "sh tests/run.sh",
            "push_attempts": 1,
            **self.extra,
        }
        lines = [f"[repos.{self.name}]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        return "\n".join(lines) + "\n"

    def payload(self, sha: str, message: str = "change") -> dict[str, Any]:
        body = push_payload(self.project, sha, message)
        body["repository"]["full_name"] = self.github_repo
        body["repository"]["name"] = self.github_repo.split("/")[1]
        return body


def write_repos_file(path: Path, repos: list[Repo], extra: str = "") -> Path:
    path.write_text("\n".join(repo.table() for repo in repos) + extra)
    path.chmod(0o600)
    return path


def new_repo(root: Path, registry: RegistryServer, name: str, github_repo: str, secret: str, **extra: Any) -> Repo:
    """A git project under ``root/git-NAME`` with the busybox app (a Dockerfile without RUN steps), pushed,
    and an image of its own in ``registry``."""
    folder = root / f"git-{name}"
    folder.mkdir()
    project = make_git_project(folder)
    project.commit_sample(f"initial {name}", test_script=PASSING)
    project.commit({"Dockerfile": DOCKERFILE}, "build without RUN steps")
    project.push()
    return Repo(name, github_repo, secret, project, f"{registry.host}/{unique(name)}/app", extra)


class ManyReposAgent(CiAgentProcess):
    """A running ``ci-agent serve`` with a repos file: ``CiAgentProcess`` signing with each repository's secret."""

    def __init__(self, process: AgentProcess, port: int, dashboard_port: int, log_dir: Path, repos_file: Path) -> None:
        super().__init__(process, port, log_dir, dashboard_port)
        self.repos_file = repos_file

    def deliver_for(self, repo: Repo, body: dict[str, Any], *, secret: str | None = None) -> httpx.Response:
        """``body`` as a push delivery signed with ``secret`` (default: ``repo``'s own)."""
        raw = json.dumps(body).encode()
        signature = sign(SecretStr(secret or repo.secret), raw)
        headers = {**self.headers(raw, signed=False), "X-Hub-Signature-256": signature}
        response = httpx.post(f"{self.url}/webhook", content=raw, headers=headers, timeout=10)
        self.answers.append(response.text)
        return response

    def push(
        self, repo: Repo, message: str = "change", *, test_script: str = PASSING, dockerfile: str | None = None
    ) -> int:
        """Commit to ``repo``'s project (``dockerfile``: its Dockerfile too), push, deliver the signed push; the
        queued run's number."""
        files = {"tests/run.sh": test_script, "www/index.html": f"<p>hello {uuid.uuid4().hex[:6]}</p>\n"}
        if dockerfile is not None:
            files["Dockerfile"] = dockerfile
        sha = repo.project.commit(files, message, executable=("tests/run.sh",))
        repo.project.push()
        answer = self.deliver_for(repo, repo.payload(sha, message))
        assert answer.status_code == 202, answer.text
        number: int = answer.json()["run"]
        return number

    def get(self, path: str, **params: Any) -> httpx.Response:
        response = httpx.get(f"{self.dashboard_url}{path}", params=params, timeout=10)
        self.answers.append(response.text)
        return response

    def runs_of(self, repo: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.get("/runs", limit=1000, repo=repo).json()
        return data

    def reload(self) -> None:
        assert self.process.process is not None
        os.kill(self.process.process.pid, signal.SIGHUP)


def launch_many(
    root: Path, repos: list[Repo], port: int, dashboard_port: int, env: dict[str, str], console: Path | None = None
) -> ManyReposAgent:
    """``ci-agent serve`` over ``repos`` (repos file, logs and state under ``root``), ready to answer; its
    console in ``console`` (default ``root``)."""
    repos_file = write_repos_file(root / "repos.toml", repos)
    environ = {
        "CI_REPOS_FILE": str(repos_file),
        "CI_HOST": "127.0.0.1",
        "CI_PORT": str(port),
        "CI_DASHBOARD_PORT": str(dashboard_port),
        "LOG_DIR": str(root / "logs"),
        "STATE_DIR": str(root / "state"),
        **env,
    }
    process = AgentProcess("ci_agent", ["serve"], environ, console or root).start()
    agent = ManyReposAgent(process, port, dashboard_port, root / "logs", repos_file)
    process.wait_until(lambda: httpx.get(f"{agent.url}/healthz").status_code == 200, what="ci-agent ready")
    return agent


class StartMany(Protocol):
    def __call__(self, repos: list[Repo], **env: str) -> ManyReposAgent: ...


@pytest.fixture
def make_repo(
    tmp_path: Path, registry: RegistryServer, docker_janitor: DockerJanitor, secret: Callable[[str], str]
) -> Callable[..., Repo]:
    def make(name: str, github_repo: str, webhook_secret: str, **extra: Any) -> Repo:
        repo = new_repo(tmp_path, registry, name, github_repo, secret(webhook_secret), **extra)
        for tag in ("latest", "ci-test", "0.1.0", "0.1.1", "0.1.2", "0.2.0"):
            docker_janitor.images.add(f"{repo.image}:{tag}")
        return repo

    return make


@pytest.fixture
def three_repos(make_repo: Callable[..., Repo]) -> list[Repo]:
    return [
        make_repo("web", "me/web", OWN_SECRET),
        make_repo("api", "org/api", ORG_SECRET),
        make_repo("docs", "org/docs", ORG_SECRET),
    ]


@pytest.fixture
def start_many(tmp_path: Path, produced: Callable[[str, str | bytes], None]) -> Iterator[StartMany]:
    agents: list[ManyReposAgent] = []
    port, dashboard_port = free_port(), free_port()

    def start(repos: list[Repo], **env: str) -> ManyReposAgent:
        agent = launch_many(tmp_path, repos, port, dashboard_port, env)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.process.stop()
        for answer in agent.answers:
            produced(f"answer of {agent.url}", answer)
