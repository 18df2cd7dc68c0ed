"""The free-space floor (``DISK_MIN_FREE``): no run or deploy starts on a nearly full disk.

A Pi's SD card fills with images and build cache; a build or a pull that runs out of space half-way
leaves broken layers and confusing errors. Both agents read the free space of the folder where Docker
keeps its data (``docker info`` ``DockerRootDir``) before a run or deploy starts, and end it at once
with a "disk" failure that says how much is free and what to prune.

The reading is ``os.statvfs`` of that folder, so it is only right when the agent sees the engine's
filesystem: a local engine (``DOCKER_HOST`` unset or ``unix://``) and the folder visible to the agent
(an agent in a container needs it bind-mounted read-only at the same path). Otherwise nothing is
checked, and ``DiskFloor.reading`` says why once (``unchecked``). ``FreeSpace`` is the seam a test sets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MIN_FREE = "2GB"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
PRUNE_HINT = (
    "free space on the engine: `docker image prune` (dangling images), `docker builder prune` (build cache), "
    "`docker image ls` to find old releases to remove"
)


def parse_size(text: str) -> int:
    """``2GB``, ``500MB``, ``1.5GiB``, ``0`` -> bytes (kB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size such as 2GB, 500MB or 1.5GiB")
    unit = (match.group(2) or "").lower().removesuffix("b")
    if unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size such as 2GB, 500MB or 1.5GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(size: int) -> str:
    """Bytes as a short decimal size: ``1.9 GB``, ``512 MB``."""
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


@dataclass(frozen=True)
class DiskReading:
    """The free bytes of the filesystem that holds ``path`` (Docker's data folder)."""

    path: str
    free: int


# What the floor reads: a DiskReading, or a string saying why nothing can be read here.
FreeSpace = Callable[[], "DiskReading | str"]


def statvfs_free_space(docker_root: str | None, docker_host: str | None) -> FreeSpace:
    """The real reading: ``os.statvfs`` of ``docker_root`` when the engine is this machine's."""

    def read() -> DiskReading | str:
        if docker_host and not docker_host.startswith("unix://"):
            return f"the engine is not on this machine (DOCKER_HOST={docker_host})"
        if not docker_root:
            return "the engine did not say where it keeps its data"
        if not Path(docker_root).is_dir():
            return f"its data folder {docker_root} is not visible to the agent (bind-mount it read-only)"
        stats = os.statvfs(docker_root)
        return DiskReading(docker_root, stats.f_bavail * stats.f_frsize)

    return read


def engine_free_space(data_root: Callable[[], str | None], docker_host: str | None = None) -> FreeSpace:
    """The free space where the engine keeps its data: ``data_root`` asks it (``docker info``) at each reading,
    raising ``PiCicdError`` when it cannot be asked (then nothing is checked: the run's Docker step says why).
    ``docker_host``: where that engine is (default ``DOCKER_HOST``; the CI agent's ``CI_BUILD_DOCKER_HOST``)."""
    from shared.errors import PiCicdError

    def read() -> DiskReading | str:
        try:
            root = data_root()
        except PiCicdError as exc:
            return f"docker info failed: {exc}"
        return statvfs_free_space(root, docker_host or os.environ.get("DOCKER_HOST"))()

    return read


class DiskFloor:
    """``DISK_MIN_FREE`` over a ``FreeSpace`` reading: ``problem(step)`` is the failure message or None."""

    def __init__(self, minimum: int, free_space: FreeSpace) -> None:
        self.minimum = minimum
        self._free_space = free_space
        self.unchecked: str | None = None  # why the last reading could not be made, for one log line

    def problem(self, step: str) -> str | None:
        """None when there is room (or nothing can be read, or the floor is 0); else what a user reads."""
        if self.minimum <= 0:
            return None
        reading = self._free_space()
        if isinstance(reading, str):
            self.unchecked = reading
            return None
        self.unchecked = None
        if reading.free >= self.minimum:
            return None
        return (
            f"disk: only {format_size(reading.free)} free where Docker keeps its data ({reading.path}), below "
            f"DISK_MIN_FREE={format_size(self.minimum)}; the {step} step did not start. {PRUNE_HINT}"
        )
