"""What the host test runner's tests get of the agent's environment (ci_agent/host_env.py)."""

from __future__ import annotations

import subprocess
import sys

from ci_agent.host_env import forget_secrets, host_test_environment

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
