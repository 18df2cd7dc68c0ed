"""Fixtures and helpers for tests that use the real Docker Engine.

Test images are built ``FROM scratch`` with Debian's static busybox, so they build in well under a
second and need no base image from Docker Hub.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

BUSYBOX = Path("/bin/busybox")


def unique(prefix: str = "picicd-test") -> str:
    """A name no other test or earlier run uses: for containers, volumes, repositories."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def busybox_dockerfile(
    *,
    cmd: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    volumes: list[str] | None = None,
    healthcheck: list[str] | None = None,
    health_interval: str = "1s",
    extra: str = "",
) -> str:
    """A ``FROM scratch`` Dockerfile with busybox at ``/bin/busybox``, its applets linked in ``/bin`` and the
    files in ``context/``.

    The links come from the context (``applets/``), not from ``RUN busybox --install``: every RUN starts a
    container, seconds on a loaded machine, and the tests build many images. One ENV for all variables for
    the same reason (the classic builder commits a layer per instruction)."""
    lines = ["FROM scratch", "COPY busybox /bin/busybox", "COPY applets/ /bin/", "COPY files/ /"]
    if env:
        lines.append("ENV " + " ".join(f"{key}={json.dumps(value)}" for key, value in env.items()))
    for volume in volumes or []:
        lines.append(f"VOLUME {volume}")
    if healthcheck:
        lines.append(
            f"HEALTHCHECK --interval={health_interval} --timeout=2s --retries=3 "
            f"CMD {json.dumps(healthcheck)}"
        )
    if extra:
        lines.append(extra)
    lines.append(f"CMD {json.dumps(cmd or ['httpd', '-f', '-p', '8080', '-h', '/www'])}")
    return "\n".join(lines) + "\n"


@functools.cache
def busybox_applets() -> tuple[str, ...]:
    """What ``busybox --install -s /bin`` would link to ``/bin/busybox``."""
    listed = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    return tuple(name for name in listed if name != "busybox")


def write_busybox_context(directory: Path, dockerfile: str, files: Mapping[str, str | bytes] | None = None) -> Path:
    """Lay out a build context: Dockerfile, busybox, its applet links under applets/, and ``files`` (paths
    inside the image; a path ending in ``/`` is an empty directory) under files/."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(dockerfile)
    shutil.copy2(BUSYBOX, directory / "busybox")
    applets = directory / "applets"
    applets.mkdir(exist_ok=True)
    for name in busybox_applets():
        (applets / name).symlink_to("/bin/busybox")
    root = directory / "files"
    root.mkdir(exist_ok=True)
    (root / ".keep").write_text("")
    for path, content in (files or {}).items():
        target = root / path.lstrip("/")
        if path.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return directory


def build_context_tar(dockerfile: str, files: Mapping[str, str | bytes] | None = None) -> io.BytesIO:
    """The same build context as an in-memory tar, for ``images.build(fileobj=..., custom_context=True)``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        def add_entry(name: str, kind: bytes, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, 0o755 if kind == tarfile.DIRTYPE else 0o777
            tar.addfile(info)

        add("Dockerfile", dockerfile.encode())
        add("busybox", BUSYBOX.read_bytes(), 0o755)
        add_entry("applets", tarfile.DIRTYPE)
        for applet in busybox_applets():
            add_entry(f"applets/{applet}", tarfile.SYMTYPE, "/bin/busybox")
        add("files/.keep", b"")
        for path, content in (files or {}).items():
            if path.endswith("/"):
                add_entry("files/" + path.strip("/"), tarfile.DIRTYPE)
            else:
                add("files/" + path.lstrip("/"), content if isinstance(content, bytes) else content.encode(), 0o755)
    buffer.seek(0)
    return buffer


@dataclass
class DockerJanitor:
    """Remembers what a test created and removes it afterwards, even when the test failed."""

    client: Any
    containers: set[str] = field(default_factory=set)
    images: set[str] = field(default_factory=set)
    volumes: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)
    name_prefixes: set[str] = field(default_factory=set)

    def cleanup(self) -> None:
        prefixes = tuple(self.name_prefixes)
        if prefixes:
            # Filtered by name on the daemon and listed sparse: a container another test removes while
            # we list must not break the listing (a full list inspects each one and can hit NotFound).
            for prefix in prefixes:
                for container in self.client.containers.list(all=True, sparse=True, filters={"name": prefix}):
                    name = container.attrs.get("Names", [""])[0].lstrip("/")
                    if name.startswith(prefixes):
                        self.containers.add(name)
        for name in self.containers:
            try:
                self.client.containers.get(name).remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
        for image in self.images:
            try:
                self.client.images.remove(image, force=True)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError:
                pass
        if prefixes:
            for prefix in prefixes:
                for volume in self.client.volumes.list(filters={"name": prefix}):
                    if volume.name.startswith(prefixes):
                        self.volumes.add(volume.name)
        for name in self.volumes:
            try:
                self.client.volumes.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
        for name in self.networks:  # after the containers on them
            try:
                self.client.api.remove_network(name)
            except docker.errors.NotFound:
                pass


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    client = docker.from_env(version="auto")
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"these tests need a running Docker Engine (start dockerd): {exc}")
    yield client
    client.close()


@pytest.fixture
def docker_janitor(docker_client: Any) -> Iterator[DockerJanitor]:
    janitor = DockerJanitor(docker_client)
    yield janitor
    janitor.cleanup()
