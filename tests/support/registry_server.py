"""A real distribution registry (Debian's ``docker-registry``) on a loopback port.

``registry`` is one plain registry for the whole session; tests keep apart by using unique
repository names. ``start_registry`` starts others (with auth, or to stop and start again).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.polling import wait_for
from tests.support.ports import free_port, port_open

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


@dataclass
class RegistryServer:
    """A running (or stopped) ``docker-registry`` process."""

    root: Path
    port: int
    auth_yaml: str = ""
    delete: bool = True  # storage.delete.enabled (Debian's default config leaves it off)
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def config_path(self) -> Path:
        return self.root / "config.yml"

    def start(self) -> None:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.config_path().write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
            f"  delete:\n    enabled: {str(self.delete).lower()}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            f"{self.auth_yaml}"
        )
        with (self.root / "registry.log").open("ab") as log:
            self.process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self.config_path())], stdout=log, stderr=log
            )
        wait_for(lambda: port_open(self.port), timeout=20, what=f"registry on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def start_registry(root: Path, auth_yaml: str = "", *, delete: bool = True) -> RegistryServer:
    server = RegistryServer(root=root, port=free_port(), auth_yaml=auth_yaml, delete=delete)
    server.start()
    return server


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()
