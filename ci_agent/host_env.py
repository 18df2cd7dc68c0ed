"""What the ``host`` test runner's tests get of the agent: a short list of harmless variables, no secret.

``CI_TEST_RUNNER=host`` runs the repository's test command as the agent's own user. Its environment
is built from :data:`PASSED` (and ``LC_*``) only, never a copy of the agent's: no ``CI_*``,
``REGISTRY_*``, ``SMTP_*`` or ``NOTIFY_*`` variable, no repository URL with credentials, and no
passed variable whose value holds a configured secret.

A process of the same user can also read the agent's own ``/proc/PID/environ``: the environment the
agent *started* with (systemd's ``EnvironmentFile=`` puts the secrets there), which removing
variables from ``os.environ`` does not change, since the kernel reads it from the process's memory.
:func:`shield_agent`, called once at start-up when the host runner is configured:

- removes every variable holding a secret from ``os.environ`` (``unsetenv``), so no child (git, the
  tests) inherits one;
- overwrites those variables' bytes in the start environment with zeros, so ``/proc/PID/environ``
  no longer shows them (nothing refers to them after ``unsetenv``);
- makes the agent non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``): its ``/proc/PID/environ``,
  ``/proc/PID/mem`` (the settings are in its memory) and ``/proc/PID/fd`` are then root's only.

Root, and so any member of the ``docker`` group, can still read everything; the README ("Security
notes") says what the host runner cannot protect.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path

from loguru import logger

# Passed to the tests when the agent has them (the proxies only without credentials in them).
PASSED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
})
PASSED_PREFIXES = ("LC_",)
_PR_SET_DUMPABLE = 4
# env_start in /proc/self/stat, counted from the field after the command name (field 3, the state).
_ENV_START = 50 - 3


def host_test_environment(environ: Mapping[str, str], secrets: Iterable[str]) -> dict[str, str]:
    """The environment of a host test run: the variables of :data:`PASSED` that hold no secret."""
    hidden = [secret for secret in secrets if secret]
    return {
        name: value
        for name, value in environ.items()
        if (name in PASSED or name.startswith(PASSED_PREFIXES))
        and "@" not in value  # a proxy URL with a login
        and not any(secret in value for secret in hidden)
    }


def forget_secrets(environ: MutableMapping[str, str], secrets: Iterable[str]) -> list[str]:
    """Remove every variable whose value holds a secret from ``environ``; the names removed."""
    hidden = [secret for secret in secrets if secret]
    names = [name for name, value in environ.items() if any(secret in value for secret in hidden)]
    for name in names:
        del environ[name]
    return names


def shield_agent(secrets: Iterable[str]) -> bool:
    """Before host tests ever run: secrets out of ``os.environ`` and ``/proc/PID/environ``, the process
    non-dumpable; False where that is not possible (not Linux, or the kernel refused)."""
    names = forget_secrets(os.environ, secrets)
    if not sys.platform.startswith("linux"):
        return False
    wipe_start_environment(names)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        logger.bind(agent="ci").warning(
            "cannot make the agent non-dumpable ({}): host tests may read its start environment in /proc",
            os.strerror(ctypes.get_errno()),
        )
        return False
    return True


def wipe_start_environment(names: Iterable[str]) -> int:
    """Zero the entries ``NAME=value`` of ``names`` in this process's start environment; how many were.

    Only for names already removed with ``unsetenv`` (``del os.environ[NAME]``): libc's ``environ``
    no longer points at them, so nothing reads those bytes again. The start environment is the range
    ``env_start``..``env_end`` of ``/proc/self/stat`` (Linux 3.5+), which ``/proc/PID/environ`` shows.
    """
    wanted = {name.encode() for name in names}
    if not wanted:
        return 0
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        start, end = int(fields[_ENV_START]), int(fields[_ENV_START + 1])
    except (OSError, ValueError, IndexError):
        return 0
    if not 0 < start < end:
        return 0
    data = ctypes.string_at(start, end - start)
    wiped = 0
    offset = 0
    for entry in data.split(b"\0"):
        if entry.partition(b"=")[0] in wanted:
            ctypes.memset(start + offset, 0, len(entry))
            wiped += 1
        offset += len(entry) + 1
    return wiped
