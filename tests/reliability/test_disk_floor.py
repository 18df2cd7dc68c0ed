"""DISK_MIN_FREE: a deploy or CI run that would start on a nearly full disk ends at once with a "disk" failure.

A nearly full Docker data root cannot be made here without a second dockerd (the engine's data root is
fixed at its start), so the free-space reading is set through its seam (``shared.disk.FreeSpace``); the
deployer, the engine, the registry and the pipeline are real. ``engine_free_space`` is read for real too,
and the real reading (``statvfs_free_space``) is pointed at a small tmpfs that is nearly full (a real
filesystem; mounting it needs root, the test is skipped otherwise).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cd_agent.deployer import Deployer
from cd_agent.docker_gateway import DockerGateway
from shared.disk import DiskFloor, DiskReading, engine_free_space, statvfs_free_space
from shared.notify import Notifier
from tests.support.cd_apps import CdWorld, build_deployer

pytestmark = pytest.mark.docker

NEARLY_FULL = DiskReading("/var/lib/docker", 1_200_000_000)


def test_the_real_reading_is_the_engine_data_root_on_this_machine() -> None:
    docker = DockerGateway.from_env()
    try:
        reading = engine_free_space(docker.data_root)()
    finally:
        docker.close()
    assert isinstance(reading, DiskReading), reading
    assert reading.path == docker_root() and reading.free > 0


def docker_root() -> str:
    docker = DockerGateway.from_env()
    try:
        root = docker.data_root()
    finally:
        docker.close()
    assert root
    return root


@pytest.mark.reliability(
    "A new release while the disk where Docker keeps its data is nearly full (1.2 GB free, DISK_MIN_FREE=2GB; "
    "the reading set through its seam: no second dockerd here)",
    "the deploy fails at once at step `disk` with the free space, the floor and what to prune, and the usual "
    "email; nothing is pulled or tagged, the old release keeps serving and stays the current one",
)
def test_a_deploy_on_a_nearly_full_disk_pulls_nothing_and_says_what_to_prune(
    cd_world: CdWorld, docker_client: Any
) -> None:
    world = cd_world
    world.releases.push("1.0.0")
    world.deploy_first("1.0.0")
    world.releases.push("1.1.0")

    deployer = build_deployer(
        world.settings(), Notifier(world.mailer, attempts=1),
        disk=DiskFloor(2_000_000_000, lambda: NEARLY_FULL),
    )
    try:
        report = deployer.deploy("1.1.0")
        deployer.notifier.close(5)
        assert report.outcome == "failed" and report.failed_step == "disk"
        assert report.error is not None
        assert "only 1.2 GB free where Docker keeps its data (/var/lib/docker)" in report.error
        assert "DISK_MIN_FREE=2.0 GB" in report.error and "docker builder prune" in report.error
        # nothing pulled, nothing swapped: the old release serves and is still the current one
        assert world.served() == "1.0.0"
        assert deployer.state.current is not None and deployer.state.current.version == "1.0.0"
        assert not docker_client.images.list(name=f"{world.releases.repository}:1.1.0")
        run = deployer.runs.get(report.run or 0)
        assert run is not None and run.status == "failed" and run.failed_step == "disk"
        # the usual failure email
        assert world.mailer.sent and "1.1.0" in world.mailer.sent[-1].subject
        assert "only 1.2 GB free" in world.mailer.sent[-1].body
    finally:
        deployer.state.close()
        deployer.runs.close()


def test_with_room_on_the_disk_the_deploy_goes_ahead(cd_world: CdWorld) -> None:
    world = cd_world
    world.releases.push("1.0.0")
    roomy = DiskFloor(2_000_000_000, lambda: DiskReading("/var/lib/docker", 50_000_000_000))
    with deployer_with(world, roomy) as deployer:
        assert deployer.deploy("1.0.0").outcome == "deployed"
        assert world.served() == "1.0.0"


@contextmanager
def deployer_with(world: CdWorld, floor: DiskFloor) -> Iterator[Deployer]:
    """A real deployer of ``world`` with this free-space floor, closed afterwards."""
    deployer = build_deployer(world.settings(), Notifier(world.mailer, attempts=1), disk=floor)
    try:
        yield deployer
    finally:
        deployer.notifier.close(5)
        deployer.state.close()
        deployer.runs.close()


@contextmanager
def nearly_full_tmpfs(where: Path, size: int, free: int) -> Iterator[Path]:
    """A real filesystem of ``size`` bytes with about ``free`` of them left: a tmpfs, mounted here (root only)."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], capture_output=True, text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        stats = os.statvfs(where)
        (where / "fill").write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - free))
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.reliability(
    "A deploy while a real filesystem is nearly full (a 16 MB tmpfs with about 1 MB left, DISK_MIN_FREE=4MB; "
    "the floor reads that filesystem with statvfs instead of the shared test engine's data root)",
    "the deploy fails at once at step `disk` with the free space read from that filesystem; once files there "
    "are deleted, the same floor lets the next deploy go ahead",
)
def test_a_nearly_full_real_filesystem_stops_the_deploy_until_space_is_freed(
    cd_world: CdWorld, tmp_path: Path
) -> None:
    world = cd_world
    world.releases.push("1.0.0")
    with nearly_full_tmpfs(tmp_path / "docker-root", 16 * 2**20, 2**20) as root:
        floor = DiskFloor(4 * 10**6, statvfs_free_space(str(root), None))
        with deployer_with(world, floor) as deployer:
            report = deployer.deploy("1.0.0")
            assert report.outcome == "failed" and report.failed_step == "disk"
            assert report.error is not None and f"where Docker keeps its data ({root})" in report.error
            free = re.search(r"only ([\d.]+) (kB|MB) free", report.error)
            assert free is not None and float(free[1]) * {"kB": 1e3, "MB": 1e6}[free[2]] < 4e6
            assert world.served() is None

            (root / "fill").unlink()
            assert deployer.deploy("1.0.0").outcome == "deployed"
            assert world.served() == "1.0.0"
