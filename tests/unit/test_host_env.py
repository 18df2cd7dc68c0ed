"""What the host test runner's tests get of the agent's environment (ci_agent/host_env.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ci_agent.host_env import forget_secrets, host_test_environment
from tests.support.other_user import NOBODY, needs_root

SECRETS = ["whsec-unit-Hk3", "ghp-unit-token-Lp9"]
AGENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/var/lib/pi-cicd",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "https_proxy": "http://proxy.lan:3128",
    "HTTP_PROXY": "http://me:pw@proxy.lan:3128",
    "CI_WEBHOOK_SECRET": "whsec-unit-Hk3",
    "CI_REPO_URL": "https://x-access-token:ghp-unit-token-Lp9@github.com/o/r.git",
    "CI_BRANCH": "main",
    "SMTP_HOST": "mail.lan",
    "REGISTRY_USERNAME": "ci",
    "NOTIFY_TO": "me@example.org",
    "DOCKER_HOST": "unix:///run/docker.sock",
    "PYTHONPATH": "/opt/agent",
    "TMPDIR": "/tmp/ghp-unit-token-Lp9",
}


def test_only_the_allowlist_reaches_the_tests():
    assert host_test_environment(AGENT, SECRETS) == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/var/lib/pi-cicd",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "https_proxy": "http://proxy.lan:3128",
    }


def test_forget_secrets_removes_every_variable_holding_one():
    environ = dict(AGENT)
    removed = forget_secrets(environ, [*SECRETS, ""])
    assert sorted(removed) == ["CI_REPO_URL", "CI_WEBHOOK_SECRET", "TMPDIR"]
    assert not any(secret in value for value in environ.values() for secret in SECRETS)
    assert environ["CI_BRANCH"] == "main"


def test_shield_agent_wipes_the_start_environment():
    # In a child process of its own: the shield changes the process it runs in for good.
    code = (
        "import ctypes, os, subprocess, sys\n"
        "from ci_agent.host_env import shield_agent\n"
        "from pathlib import Path\n"
        "assert b'whsec-unit-Hk3' in Path('/proc/self/environ').read_bytes()\n"
        "print(shield_agent(['whsec-unit-Hk3']))\n"
        "print(b'whsec-unit-Hk3' in Path('/proc/self/environ').read_bytes(), 'CI_WEBHOOK_SECRET' in os.environ)\n"
        "print(subprocess.run(['env'], capture_output=True, text=True).stdout.count('whsec-unit-Hk3'))\n"
        "print(os.environ['CI_BRANCH'])\n"
        "print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))\n"  # PR_GET_DUMPABLE
    )
    environ = {"PATH": "/usr/bin:/bin", "CI_WEBHOOK_SECRET": "whsec-unit-Hk3", "CI_BRANCH": "main",
               "PYTHONPATH": ":".join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:5] == ["True", "False False", "0", "main", "0"], result.stderr


def system_python() -> str | None:
    """An interpreter another user may run (this one may live under /root), of this Python's version."""
    python = "/usr/bin/python3"
    if not os.path.exists(python):
        return None
    version = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                             text=True, check=False).stdout.strip()
    return python if version == str(sys.version_info[:2]) else None


@needs_root
@pytest.mark.skipif(system_python() is None, reason="no /usr/bin/python3 of this version that another user may run")
def test_a_process_of_the_same_user_cannot_read_a_shielded_agent():
    # The agent and the "tests" both as nobody, as a systemd service and its host tests are one user.
    agent_code = (
        "import sys, time\n"
        "from ci_agent.host_env import shield_agent\n"
        "if sys.argv[1] == 'shield':\n"
        "    shield_agent(['whsec-unit-Hk3'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    results = {}
    for mode in ("plain", "shield"):
        agent = subprocess.Popen(
            [*NOBODY, str(system_python()), "-c", agent_code, mode],
            env={"PATH": "/usr/bin:/bin", "CI_WEBHOOK_SECRET": "whsec-unit-Hk3", "PYTHONPATH": ":".join(sys.path)},
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert agent.stdout is not None and agent.stdout.readline() == "ready\n"
            reader = subprocess.run([*NOBODY, "cat", f"/proc/{agent.pid}/environ"], capture_output=True, check=False)
            seen = reader.stdout
            results[mode] = (reader.returncode, b"whsec-unit-Hk3" in seen, b"Permission denied" in reader.stderr)
        finally:
            agent.kill()
            agent.communicate()
    assert results == {"plain": (0, True, False), "shield": (1, False, True)}
