"""The host test runner: the repository's tests run as the agent's user and must find none of its secrets.

A real ``ci-agent serve`` with ``CI_TEST_RUNNER=host``, its repository behind a real smart-HTTP git
server that wants a token in ``CI_REPO_URL``, and secrets in its start environment (as systemd's
``EnvironmentFile=`` gives them). The repository's test script is hostile: it dumps its environment
and the agent's start environment (``/proc/$PPID/environ``) into the run log and into a file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.ci_agent_server import SMTP_PASSWORD, WEBHOOK_SECRET, StartAgent, push_payload
from tests.support.git_http import TOKEN_USER, GitHttpServer
from tests.support.git_repos import GitProject

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO_TOKEN = "ghp-host-runner-Vb7q-never-shown"
REGISTRY_PASSWORD = "registry-host-runner-Mx3d-never-shown"
SECRET_NAMES = ("CI_WEBHOOK_SECRET", "SMTP_PASSWORD", "REGISTRY_PASSWORD", "CI_REPO_URL")


def snooping_tests(out: Path) -> str:
    """A test script that shows everything it can read of the agent's environment, then fails."""
    return (
        "#!/bin/sh\n"
        f"out={out}\n"
        '{ echo "== env"; env; echo "== /proc/$PPID/environ"; cat /proc/$PPID/environ | tr "\\0" "\\n";'
        ' echo "== done"; } > "$out" 2>&1\n'
        'cat "$out"\n'
        "exit 1\n"
    )


@pytest.fixture
def git_http_server(tmp_path: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(tmp_path / "git", TOKEN_USER, REPO_TOKEN) as server:
        yield server


@pytest.mark.reliability(
    "CI_TEST_RUNNER=host; the agent started with CI_WEBHOOK_SECRET, SMTP_PASSWORD, REGISTRY_PASSWORD and a token "
    "in CI_REPO_URL in its environment (as systemd's EnvironmentFile= gives them); the repository's test script "
    "runs `env` and `cat /proc/$PPID/environ` (the agent's start environment) into the run log and a file",
    "no secret and none of those variables in what the tests saw or in the run log: the tests get a short "
    "allowlisted environment (PATH, HOME, LANG, ...); the agent removed the secrets from its start environment "
    "(what /proc/PID/environ shows; this suite runs as root, which may read it) and is non-dumpable (another "
    "user's process, the agent's own user included, may not read it at all)",
)
def test_host_tests_find_none_of_the_agents_secrets(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    git_http_server: GitHttpServer,
    tmp_path: Path,
    secret: Callable[[str], str],
    observed: Callable[[str], None],
) -> None:
    secrets = [secret(REPO_TOKEN), secret(REGISTRY_PASSWORD), WEBHOOK_SECRET, SMTP_PASSWORD]
    saw = tmp_path / "host-tests-saw.txt"
    agent = start_ci_agent(
        CI_REPO_URL=git_http_server.url("origin.git", user=TOKEN_USER, password=REPO_TOKEN),
        CI_TEST_RUNNER="host", CI_TEST_COMMAND="sh tests/run.sh",
        REGISTRY_USERNAME="ci", REGISTRY_PASSWORD=REGISTRY_PASSWORD,
    )
    sha = git_project.commit_sample("snooping tests", test_script=snooping_tests(saw))
    answer = agent.deliver(push_payload(git_project, sha, "test: snoop"))
    assert answer.status_code == 202, answer.text
    run = agent.wait_finished(answer.json()["run"])
    seen = saw.read_text(errors="replace") if saw.exists() else ""
    log = agent.log_of(run["number"])
    environ_part = seen.partition("== /proc/$PPID/environ")[2].partition("== done")[0]
    shown = [line for line in environ_part.splitlines() if line.strip()]
    variables = [line.split("=", 1)[0] for line in seen.partition("== /proc")[0].splitlines()[1:] if "=" in line]
    leaked = [f"secret #{i + 1}" for i, value in enumerate(secrets) if value in seen or value in log]
    named = [name for name in SECRET_NAMES if name in seen or name in log]
    observed(
        f"run {run['number']} {run['status']} at {run['failed_step']}; the tests saw {len(variables)} variables "
        f"({', '.join(sorted(variables))}); /proc/$PPID/environ: {len(shown)} lines "
        f"({'refused' if 'Permission denied' in environ_part else ', '.join(line.split('=')[0] for line in shown)}); "
        f"secrets found: {leaked or 'none'}; secret variable names found: {named or 'none'}"
    )
    assert (run["status"], run["failed_step"]) == ("failed", "test"), run
    assert "== env" in seen and "PATH=" in seen and "== done" in seen, seen
    assert not leaked
    assert not named
