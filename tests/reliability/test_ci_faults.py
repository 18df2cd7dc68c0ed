"""CI faults: a broken registry, Docker, git remote, test command or mail server, and the agent killed mid-run.

Each test runs ``ci-agent serve`` as a real process. Faults come from real components stopped or
pointed at nothing, and from a small HTTP server on loopback that forwards to the real registry,
fails, or holds requests open, so the agent can be caught inside a given step.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ci_agent_server import (
    SMTP_PASSWORD,
    StartAgent,
    gated_test_script,
    push_payload,
    registry_tags,
)
from tests.support.fault_proxy import DockerSocketRelay
from tests.support.git_repos import SAMPLE_DOCKERFILE, GitProject
from tests.support.polling import SHUTDOWN_POLL, wait_for
from tests.support.ports import free_port
from tests.support.registry_server import RegistryServer
from tests.support.smtp_server import SmtpServer, StartSmtpServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PASSING = "#!/bin/sh\necho host tests passed\n"
HOST_RUNNER = {"CI_TEST_RUNNER": "host", "CI_TEST_COMMAND": "sh tests/run.sh"}


class FaultServer:
    """An HTTP server on loopback: forwards the first ``forward`` GETs to ``upstream``, then fails or hangs.

    ``mode="fail"`` answers 503 to everything after that; ``mode="drop"`` closes the connection without
    an answer (a registry going away); ``mode="hang"`` holds every later request open until the server
    is closed, so whoever sent it stays inside the step that sent it.
    """

    def __init__(self, upstream: str | None, *, forward: int, mode: str) -> None:
        self.upstream = upstream
        self.remaining = forward
        self.mode = mode
        self.requests: list[str] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.port = free_port()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def handle_any(self) -> None:
                server.requests.append(f"{self.command} {self.path}")
                with server.lock:
                    forward = server.upstream is not None and self.command == "GET" and server.remaining > 0
                    if forward:
                        server.remaining -= 1
                if forward:
                    accept = self.headers["Accept"] or "*/*"
                    answer = httpx.get(f"{server.upstream}{self.path}", headers={"Accept": accept})
                    self.send_response(answer.status_code)
                    for name in ("Content-Type", "Docker-Distribution-Api-Version", "Link"):
                        if name in answer.headers:
                            self.send_header(name, answer.headers[name])
                    self.send_header("Content-Length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                    return
                if server.mode == "hang":
                    server.release.wait(120)
                    return
                if server.mode == "drop":
                    self.close_connection = True
                    return
                body = b'{"errors":[{"code":"UNAVAILABLE","message":"registry down (fault injected)"}]}'
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=SHUTDOWN_POLL, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fault_server() -> Iterator[Callable[..., FaultServer]]:
    servers: list[FaultServer] = []

    def start(upstream: str | None = None, *, forward: int = 0, mode: str = "fail") -> FaultServer:
        server = FaultServer(upstream, forward=forward, mode=mode)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def mail_env(smtp: SmtpServer) -> dict[str, str]:
    return {
        "SMTP_HOST": smtp.host,
        "SMTP_PORT": str(smtp.port),
        "SMTP_SECURITY": "none",
        "NOTIFY_FROM": "ci@example.invalid",
        "NOTIFY_TO": "dev@example.invalid",
    }


def repository_of(image: str) -> str:
    return image.split("/", 1)[1]


def first_mail(smtp: SmtpServer, produced: Callable[[str, str | bytes], None]) -> Any:
    [mail] = smtp.wait_for_messages(1, timeout=30)
    produced("failure email", mail.as_string())
    return mail


@pytest.mark.reliability(
    "the registry goes away after the version is decided: a fault proxy in front of the real registry lets "
    "the tag listings through, then drops every connection (docker push's too); CI_PUSH_ATTEMPTS=2",
    "push retried, then the run fails at step push, one email naming the step, no tag in the registry",
)
def test_registry_down_during_push(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    registry: RegistryServer,
    ci_image_name: str,
    fault_server: Callable[..., FaultServer],
    smtp_server: SmtpServer,
    produced: Callable[[str, str | bytes], None],
    observed: Callable[[str], None],
) -> None:
    # Three tag listings reach the real registry: the replay checks after checkout, the build step's
    # version decision and the push step's re-check. Everything after that (docker push's own
    # requests) fails.
    proxy = fault_server(registry.url, forward=3, mode="drop")
    image = f"{proxy.host}/{repository_of(ci_image_name)}"
    agent = start_ci_agent(CI_IMAGE=image, CI_PUSH_ATTEMPTS="2", **HOST_RUNNER, **mail_env(smtp_server))
    sha = git_project.commit_sample("release", test_script=PASSING)
    run = agent.wait_finished(agent.deliver(push_payload(git_project, sha, "fix: release")).json()["run"])
    log = agent.log_of(run["number"])
    mail = first_mail(smtp_server, produced)
    attempts = log.count("pushing ") + log.count("failed; attempt")
    observed(
        f"run {run['number']} {run['status']} at {run['failed_step']}: {str(run['error'])[:120]}; "
        f"{log.count('failed; attempt') + 1} push attempts; email {mail['Subject']!r}; "
        f"registry tags {registry_tags(ci_image_name)}"
    )
    assert (run["status"], run["failed_step"]) == ("failed", "push"), run
    assert "push of" in log and "attempt 2" in log, attempts
    assert "push" in mail["Subject"]
    assert registry_tags(ci_image_name) == []


@pytest.mark.reliability(
    "DOCKER_HOST points at a socket nothing listens on (dockerd unreachable) when the agent starts and runs",
    "the agent still starts and answers webhooks; the run fails at its first Docker step (test) saying the "
    "Docker Engine cannot be reached; email sent",
)
def test_docker_unreachable(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    tmp_path: Path,
    smtp_server: SmtpServer,
    produced: Callable[[str, str | bytes], None],
    observed: Callable[[str], None],
) -> None:
    agent = start_ci_agent(DOCKER_HOST=f"unix://{tmp_path / 'no-dockerd.sock'}", **mail_env(smtp_server))
    sha = git_project.commit_sample("needs docker")
    run = agent.wait_finished(agent.deliver(push_payload(git_project, sha, "needs docker")).json()["run"])
    mail = first_mail(smtp_server, produced)
    observed(f"run {run['number']} {run['status']} at {run['failed_step']}: {str(run['error'])[:140]}")
    assert (run["status"], run["failed_step"]) == ("failed", "test"), run
    assert "Docker Engine" in run["error"]
    assert "test" in mail["Subject"]


@pytest.mark.reliability(
    "the Docker daemon goes away in the middle of a build (DOCKER_HOST is a relay to the real socket; the relay "
    "is taken down while the Dockerfile's RUN step runs), then comes back",
    "the run fails at step build saying Docker could not be reached, with an email, no tag pushed; once Docker "
    "is back the next push succeeds without restarting the agent",
)
def test_docker_gone_mid_build(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    ci_image_name: str,
    docker_relay: DockerSocketRelay,
    smtp_server: SmtpServer,
    produced: Callable[[str, str | bytes], None],
    observed: Callable[[str], None],
) -> None:
    agent = start_ci_agent(DOCKER_HOST=docker_relay.docker_host, **HOST_RUNNER, **mail_env(smtp_server))
    git_project.commit_sample("first", test_script=PASSING)
    slow = git_project.commit({"Dockerfile": SLOW_BUILD}, "feat: a build that takes 20 s")
    git_project.push()
    number = agent.deliver(push_payload(git_project, slow, "feat: a build that takes 20 s")).json()["run"]
    agent.process.wait_until(lambda: "[build]" in agent.log_of(number), timeout=60, what="docker build output")
    docker_relay.down()
    broken = agent.wait_finished(number)
    mail = first_mail(smtp_server, produced)
    docker_relay.up()

    fixed = git_project.commit({"Dockerfile": SAMPLE_DOCKERFILE}, "fix: a quick build again")
    git_project.push()
    again = agent.deliver(push_payload(git_project, fixed, "fix: a quick build again"))
    after = agent.wait_finished(again.json()["run"])
    observed(
        f"run {broken['number']} {broken['status']} at {broken['failed_step']}: {str(broken['error'])[:120]}; "
        f"email '{mail['Subject']}'; after Docker came back run {after['number']} {after['status']} "
        f"({after['version']}); tags {registry_tags(ci_image_name)}"
    )
    assert (broken["status"], broken["failed_step"], broken["version"]) == ("failed", "build", None), broken
    assert "Docker Engine" in broken["error"]
    assert "build" in mail["Subject"]
    assert (after["status"], after["version"]) == ("succeeded", "0.1.0"), after
    assert registry_tags(ci_image_name) == ["0.1.0", "latest"]


@pytest.mark.reliability(
    "CI_REPO_URL names a git repository that does not exist",
    "the run fails at step checkout naming the fetch, with an email; the agent keeps serving",
)
def test_git_remote_unreachable(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    tmp_path: Path,
    smtp_server: SmtpServer,
    produced: Callable[[str, str | bytes], None],
    observed: Callable[[str], None],
) -> None:
    agent = start_ci_agent(CI_REPO_URL=(tmp_path / "missing.git").as_uri(), **HOST_RUNNER, **mail_env(smtp_server))
    sha = git_project.commit_sample("unreachable")
    run = agent.wait_finished(agent.deliver(push_payload(git_project, sha, "unreachable")).json()["run"])
    mail = first_mail(smtp_server, produced)
    observed(f"run {run['number']} {run['status']} at {run['failed_step']}: {str(run['error'])[:140]}")
    assert (run["status"], run["failed_step"]) == ("failed", "checkout"), run
    assert "checkout" in mail["Subject"]
    assert httpx.get(f"{agent.url}/healthz").status_code == 200


@pytest.mark.reliability(
    "the test command hangs (exec sleep 600) with CI_TEST_TIMEOUT=2",
    "killed at its time limit: the run fails at step test within a few seconds and the process is gone",
)
def test_hanging_test_command_is_killed(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    tmp_path: Path,
    observed: Callable[[str], None],
) -> None:
    pid_file = tmp_path / "test.pid"
    agent = start_ci_agent(CI_TEST_TIMEOUT="2", **HOST_RUNNER)
    sha = git_project.commit_sample("hangs", test_script=f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    began = time.monotonic()
    run = agent.wait_finished(agent.deliver(push_payload(git_project, sha, "hangs")).json()["run"], timeout=60)
    elapsed = time.monotonic() - began
    pid = int(pid_file.read_text())
    observed(f"run {run['status']} at {run['failed_step']} after {elapsed:.1f}s: {str(run['error'])[:120]}")
    assert (run["status"], run["failed_step"]) == ("failed", "test"), run
    assert elapsed < 30
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.reliability(
    "the SMTP server is down when a run fails (stopped before the run)",
    "the run's outcome is unchanged (failed at test), the mail failure is logged, the agent keeps serving",
)
def test_smtp_down_changes_nothing(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    start_smtp_server: StartSmtpServer,
    observed: Callable[[str], None],
) -> None:
    smtp = start_smtp_server()
    env = mail_env(smtp)
    smtp.stop()
    agent = start_ci_agent(**HOST_RUNNER, **env)
    sha = git_project.commit_sample("fails", test_script="#!/bin/sh\necho broken\nexit 1\n")
    run = agent.wait_finished(agent.deliver(push_payload(git_project, sha, "fails")).json()["run"])
    agent.process.wait_until(lambda: "not sent after" in agent.process.output, timeout=60, what="mail failure logged")
    line = next(line for line in agent.process.output.splitlines() if "not sent after" in line)
    observed(f"run {run['status']} at {run['failed_step']}; logged: {line.split('|')[-1].strip()[:160]}")
    assert (run["status"], run["failed_step"]) == ("failed", "test"), run
    assert SMTP_PASSWORD not in agent.process.output
    assert httpx.get(f"{agent.url}/healthz").status_code == 200


SLOW_BUILD = SAMPLE_DOCKERFILE.replace('CMD ["httpd"', 'RUN ["/bin/busybox", "sleep", "20"]\nCMD ["httpd"')


@pytest.mark.parametrize("step", ["checkout", "test", "build", "push"])
@pytest.mark.reliability(
    "the agent SIGKILLed (with its children) while a run is inside a step, a second push queued behind it; "
    "then restarted",
    "no run left running: the killed run is interrupted, the queued run then runs and succeeds",
)
def test_agent_killed_at_each_step(
    step: str,
    start_ci_agent: StartAgent,
    git_project: GitProject,
    registry: RegistryServer,
    ci_image_name: str,
    fault_server: Callable[..., FaultServer],
    tmp_path: Path,
    observed: Callable[[str], None],
) -> None:
    held: dict[str, str] = {}
    test_script = PASSING
    dockerfile = SAMPLE_DOCKERFILE
    if step == "checkout":
        # A git "server" that accepts the connection and never answers: the fetch hangs in checkout.
        held["CI_REPO_URL"] = f"http://{fault_server(mode='hang').host}/origin.git"
    elif step == "test":
        test_script = gated_test_script(tmp_path / "never-opened")
    elif step == "build":
        dockerfile = SLOW_BUILD
    else:
        # The replay checks and the version decision reach the registry; the push step's first request hangs.
        proxy = fault_server(registry.url, forward=2, mode="hang")
        held["CI_IMAGE"] = f"{proxy.host}/{repository_of(ci_image_name)}"
    agent = start_ci_agent(**HOST_RUNNER, **held)
    stuck_sha = git_project.commit_sample("held", test_script=test_script)
    if dockerfile != SAMPLE_DOCKERFILE:
        stuck_sha = git_project.commit({"Dockerfile": dockerfile}, "held: a build that takes 20 s")
        git_project.push()
    stuck = agent.deliver(push_payload(git_project, stuck_sha, "held")).json()["run"]
    agent.wait_status(stuck, "running")
    agent.process.wait_until(lambda: f"step {step} started" in agent.log_of(stuck), what=f"run inside {step}")
    if step == "build":
        wait_for(lambda: "[build]" in agent.log_of(stuck), timeout=30, what="docker build output")
    queued = git_project.commit({"tests/run.sh": PASSING, "Dockerfile": SAMPLE_DOCKERFILE}, "fix: after the crash")
    git_project.push()
    behind = agent.deliver(push_payload(git_project, queued, "fix: after the crash")).json()["run"]
    last_step = _last_started_step(agent.log_of(stuck))
    agent.process.kill()

    restarted = start_ci_agent(**HOST_RUNNER)
    killed = restarted.run(stuck)
    following = restarted.wait_finished(behind)
    statuses = [run["status"] for run in restarted.runs()]
    observed(
        f"killed inside {last_step}; after restart run {stuck} {killed['status']}, run {behind} "
        f"{following['status']} ({following['version']}); runs running: {statuses.count('running')}"
    )
    assert last_step == step
    assert killed["status"] == "interrupted" and killed["finished_at"], killed
    assert (following["status"], following["version"]) == ("succeeded", "0.1.0"), following
    assert "running" not in statuses


def _last_started_step(log: str) -> str | None:
    steps = re.findall(r"\| step (\w+) started", log)
    return steps[-1] if steps else None
