"""Run an agent as a real process, the way a user starts it, and stop it afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.polling import wait_for


@dataclass
class AgentProcess:
    """``python -m <module> <args>`` in ``cwd`` with exactly ``env`` (plus PATH), output to a file."""

    module: str
    args: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    output_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.output_path = self.cwd / f"{self.module}.out"

    def start(self) -> AgentProcess:
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.cwd), **self.env}
        with self.output_path.open("ab") as out:
            # A session of its own, so SIGKILL can take the agent and its children down together.
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                cwd=self.cwd,
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the agent and everything it started: a crash, not a shutdown."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def wait_until(self, condition: object, *, timeout: float = 30, what: str = "") -> None:
        def check() -> object:
            if not self.running():
                raise AssertionError(f"{self.module} exited early:\n{self.output[-3000:]}")
            return condition() if callable(condition) else condition

        wait_for(check, timeout=timeout, what=what)
