"""Hardening: private files under a permissive umask, a warning for an SMTP login sent in clear.

The agents run as real processes started with umask 000 (what some containers and shells give a
process started by hand); the modes are read back from the files they wrote. The SMTP scenarios
start real agents and read their console output.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.cd_apps import CdWorld, clean_environ, status_json, version_of
from tests.support.ci_agent_server import SMTP_PASSWORD, StartAgent, push_payload
from tests.support.git_repos import GitProject
from tests.support.registry_server import RegistryServer
from tests.support.smtp_server import StartSmtpServer

HOST_RUNNER = {"CI_TEST_RUNNER": "host", "CI_TEST_COMMAND": "sh tests/run.sh"}
FAILING_TESTS = "#!/bin/sh\necho the commit message of a private repository\nexit 1\n"
WARNING = "SMTP_SECURITY=none"


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """``mask`` for processes started inside the block (a child keeps the umask it was forked with)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def modes(root: Path, *, skip: Callable[[Path], bool] = lambda path: False) -> dict[str, str]:
    """Every folder and file under ``root`` (``root`` included) and its mode, as ``0o700``-style text."""
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in sorted(root.rglob("*")):
        if not skip(path):
            found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def open_to_others(found: dict[str, str]) -> list[str]:
    """The entries any other user could read, write or enter."""
    return [f"{name} {mode}" for name, mode in found.items() if int(mode, 8) & 0o077]


@pytest.mark.docker
@pytest.mark.reliability(
    "ci-agent serve started with umask 000 (outside systemd) runs a pipeline: fetch, a failing host test, "
    "run log, run store",
    "LOG_DIR, STATE_DIR and the checkout folder are 0700; the run log and runs.sqlite3 with its -wal/-shm "
    "are 0600; nothing the agent wrote is open to other users",
)
def test_ci_agent_files_are_private_under_umask_000(
    start_ci_agent: StartAgent, git_project: GitProject, tmp_path: Path, observed: Callable[[str], None]
) -> None:
    with umask(0o000):
        agent = start_ci_agent(**HOST_RUNNER)
    sha = git_project.commit_sample("feat: private", test_script=FAILING_TESTS)
    run = agent.wait_finished(agent.deliver(push_payload(git_project, sha, "feat: private")).json()["run"])
    assert (run["status"], run["failed_step"]) == ("failed", "test"), run
    assert "the commit message of a private repository" in agent.log_of(run["number"])

    logs = modes(tmp_path / "logs")
    checkout = tmp_path / "state" / "work" / "checkout"
    # Inside the 0700 checkout, git and the tests write what they like: nobody else can reach it.
    state = modes(tmp_path / "state", skip=lambda path: checkout in path.parents)
    observed(f"LOG_DIR {logs}; STATE_DIR {state}")
    assert logs["."] == "0o700"
    assert [mode for name, mode in logs.items() if name.endswith(".log")] == ["0o600"]
    assert state["."] == "0o700"
    assert state["work"] == state["work/checkout"] == "0o700"
    assert state["runs.sqlite3"] == "0o600"
    assert {state.get("runs.sqlite3-wal"), state.get("runs.sqlite3-shm")} <= {"0o600", None}
    assert open_to_others(logs) == []
    assert open_to_others(state) == []


@pytest.mark.docker
@pytest.mark.reliability(
    "`cd-agent deploy` started with umask 000 deploys a release (real registry, real Docker)",
    "LOG_DIR and STATE_DIR are 0700; the run log, cd.sqlite3 and runs.sqlite3 (with -wal/-shm) are 0600",
)
def test_cd_agent_files_are_private_under_umask_000(cd_world: CdWorld, observed: Callable[[str], None]) -> None:
    world = cd_world
    world.releases.push("1.0.0")
    result = subprocess.run(
        [sys.executable, "-m", "cd_agent", "deploy", "1.0.0"],
        env=clean_environ(world.environ()), cwd=world.root, capture_output=True, text=True, timeout=120,
        check=False, umask=0o000,
    )
    assert result.returncode == 0, result.stderr
    assert version_of(status_json(world)["current"]) == "1.0.0"

    logs = modes(world.root / "logs")
    state = modes(world.root / "state")
    observed(f"LOG_DIR {logs}; STATE_DIR {state}")
    assert logs["."] == state["."] == "0o700"
    assert [mode for name, mode in logs.items() if name.endswith(".log")] == ["0o600"]
    assert state["cd.sqlite3"] == state["runs.sqlite3"] == "0o600"
    assert open_to_others(state) == []


def console_warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if WARNING in line and "WARNING" in line]


@pytest.mark.docker
@pytest.mark.reliability(
    "SMTP_SECURITY=none with SMTP_USERNAME/SMTP_PASSWORD and a mail server on another host, "
    "for `ci-agent serve` and `cd-agent deploy`",
    "each start says once on the console that the login crosses the network unencrypted and how to fix it; "
    "the password appears nowhere",
)
def test_a_login_in_clear_to_another_host_is_warned_about(
    start_ci_agent: StartAgent,
    registry: RegistryServer,
    tmp_path: Path,
    secret: Callable[[str], str],
    observed: Callable[[str], None],
) -> None:
    smtp = {
        "SMTP_HOST": "smtp.example.invalid",  # never contacted: no email is due in either start
        "SMTP_PORT": "25",
        "SMTP_SECURITY": "none",
        "SMTP_USERNAME": "ci-bot",
        "SMTP_PASSWORD": secret(SMTP_PASSWORD),
        "NOTIFY_FROM": "ci@example.invalid",
        "NOTIFY_TO": "dev@example.invalid",
    }
    agent = start_ci_agent(**smtp)
    agent.process.stop()
    ci_warnings = console_warnings(agent.process.output)

    environ = {
        "CD_IMAGE": f"{registry.host}/nobody/never-pushed", "CD_CONTAINER_NAME": "picicd-none",
        "STATE_DIR": str(tmp_path / "cd-state"), "LOG_DIR": str(tmp_path / "cd-logs"), **smtp,
    }
    result = subprocess.run(
        [sys.executable, "-m", "cd_agent", "deploy"], env=clean_environ(environ), cwd=tmp_path,
        capture_output=True, text=True, timeout=90, check=False,
    )
    (tmp_path / "cd_agent.out").write_text(result.stdout + result.stderr)  # for the end-of-session scan
    assert result.returncode == 4, result.stderr  # nothing to deploy: the start-up is what is tested
    cd_warnings = console_warnings(result.stderr)

    observed(f"ci-agent: {len(ci_warnings)} warning; cd-agent: {len(cd_warnings)} warning: "
             f"{ci_warnings[0].split('|')[-1].strip() if ci_warnings else '-'}")
    assert len(ci_warnings) == 1, agent.process.output
    assert len(cd_warnings) == 1, result.stderr
    for line in ci_warnings + cd_warnings:
        assert "smtp.example.invalid:25" in line and "SMTP_SECURITY=starttls" in line
    assert SMTP_PASSWORD not in agent.process.output
    assert SMTP_PASSWORD not in result.stdout + result.stderr


@pytest.mark.docker
@pytest.mark.reliability(
    "SMTP_SECURITY=none with a login to a relay on loopback (real SMTP server with AUTH on 127.0.0.1), "
    "and a run that fails",
    "no warning (loopback traffic never leaves the machine); the failure email is delivered after the login",
)
def test_a_login_in_clear_to_a_loopback_relay_is_normal(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    start_smtp_server: StartSmtpServer,
    produced: Callable[[str, str | bytes], None],
    observed: Callable[[str], None],
) -> None:
    relay = start_smtp_server(auth=("ci-bot", SMTP_PASSWORD))
    agent = start_ci_agent(
        SMTP_HOST="127.0.0.1", SMTP_PORT=str(relay.port), SMTP_SECURITY="none", SMTP_USERNAME="ci-bot",
        NOTIFY_FROM="ci@example.invalid", NOTIFY_TO="dev@example.invalid", **HOST_RUNNER,
    )
    sha = git_project.commit_sample("fix: fails", test_script=FAILING_TESTS)
    run = agent.wait_finished(agent.deliver(push_payload(git_project, sha, "fix: fails")).json()["run"])
    [mail] = relay.wait_for_messages(1, timeout=30)
    produced("failure email", mail.as_string())
    observed(f"run {run['status']}; email {mail['Subject']!r} delivered; "
             f"{len(console_warnings(agent.process.output))} warnings")
    assert run["status"] == "failed"
    assert console_warnings(agent.process.output) == []
