"""Installing the peers where users get them: ouroboros from PyPI, webhook from Debian.

ouroboros-cli 1.4.2 (2019, the last release) needs one pin to start today: it reads
``Apprise.servers``, which Apprise 2 removed (``AttributeError`` before its first poll), so
``apprise<2``. Its other dependencies (docker 7, requests 2.3x) work as they come.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

OUROBOROS = "ouroboros-cli==1.4.2"
OUROBOROS_PIN = "apprise<2"
WEBHOOK_PACKAGE = "webhook"
"""Debian's package of adnanh/webhook (2.8.0 in bookworm)."""


def ouroboros(venv: Path) -> Path:
    """The ``ouroboros`` command, in its own virtual environment (made the first time)."""
    venv = venv.resolve()
    command = venv / "bin" / "ouroboros"
    marker = venv / "installed.txt"
    wanted = f"{OUROBOROS} {OUROBOROS_PIN}\n"
    if command.exists() and marker.exists() and marker.read_text() == wanted:
        return command
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", OUROBOROS, OUROBOROS_PIN], check=True)
    marker.write_text(wanted)
    return command


def webhook() -> str:
    """The ``webhook`` command, installed with apt-get when missing (needs root)."""
    found = shutil.which("webhook")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", WEBHOOK_PACKAGE], check=True)
    found = shutil.which("webhook")
    if not found:
        raise RuntimeError("apt-get installed webhook but it is not on PATH")
    return found


def version_of(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "?"
