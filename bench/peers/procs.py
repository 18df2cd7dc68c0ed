"""Processes and Docker leftovers of the peer benchmark (peers that are not Python modules of ours)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import docker.errors

from tests.support.polling import wait_for


class Daemon:
    """A long-running command in a session of its own, its output in ``log``; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, command: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                list(command), stdout=out, stderr=subprocess.STDOUT, env=dict(env) if env is not None else None,
                cwd=cwd, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, condition: Any, *, timeout: float = 60, what: str = "") -> None:
        def check() -> object:
            if not self.alive():
                raise RuntimeError(f"{what}: the process exited early:\n{self.output()[-3000:]}")
            return condition()

        wait_for(check, timeout=timeout, what=what)

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
                return
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


def remove_repository_images(client: Any, *repositories: str) -> None:
    """Every local image tagged in one of ``repositories`` (``host:port/name/app``), whatever its tag."""
    for repository in repositories:
        try:
            images = client.images.list(name=repository)
        except docker.errors.APIError:
            continue
        for image in images:
            for tag in image.tags:
                if tag.rpartition(":")[0] == repository:
                    try:
                        client.images.remove(tag, force=True)
                    except docker.errors.APIError:
                        pass


def remove_registry_images(client: Any, host: str) -> None:
    """Every local image tagged for the registry at ``host`` (``127.0.0.1:PORT``, a port this run chose).

    From the engine's list itself (``client.api.images``): the SDK's ``images.list`` inspects each image
    in turn and fails when one is removed meanwhile, as happens on an engine shared with test runs."""
    for image in client.api.images():
        for tag in image.get("RepoTags") or ():
            if tag.startswith(f"{host}/"):
                try:
                    client.images.remove(tag, force=True)
                except docker.errors.APIError:
                    pass
