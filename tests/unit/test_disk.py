"""shared.disk: DISK_MIN_FREE's sizes, its floor, and when free space cannot be read from here."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.disk import DiskFloor, DiskReading, engine_free_space, format_size, parse_size, statvfs_free_space
from shared.errors import SettingsError
from shared.settings import SharedSettings, load_settings


@pytest.mark.parametrize(
    ("text", "size"),
    [("2GB", 2 * 10**9), ("500MB", 500 * 10**6), ("1.5GiB", 3 * 2**29), ("0", 0), ("512 kb", 512_000),
     ("2g", 2 * 10**9), ("100", 100), ("1TiB", 2**40)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1", "2 GBs", "1.2.3GB", "", "5XB"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size such as 2GB"):
        parse_size(text)


def test_disk_min_free_defaults_to_2gb_and_names_the_variable_when_wrong() -> None:
    assert load_settings(SharedSettings, {}).disk_min_free == 2 * 10**9
    assert load_settings(SharedSettings, {"DISK_MIN_FREE": "0"}).disk_min_free == 0
    with pytest.raises(SettingsError, match=r"DISK_MIN_FREE='plenty': 'plenty' is not a size"):
        load_settings(SharedSettings, {"DISK_MIN_FREE": "plenty"})


def test_the_floor_says_the_step_the_free_space_and_what_to_prune() -> None:
    floor = DiskFloor(2 * 10**9, lambda: DiskReading("/var/lib/docker", 1_500_000_000))
    problem = floor.problem("pull")
    assert problem is not None
    assert problem.startswith("disk: only 1.5 GB free where Docker keeps its data (/var/lib/docker)")
    assert "DISK_MIN_FREE=2.0 GB; the pull step did not start" in problem
    assert "docker image prune" in problem and "docker builder prune" in problem
    assert DiskFloor(2 * 10**9, lambda: DiskReading("/d", 2 * 10**9)).problem("pull") is None
    assert DiskFloor(0, lambda: DiskReading("/d", 0)).problem("pull") is None


def test_nothing_is_checked_when_the_engine_is_elsewhere_or_its_folder_is_not_visible(tmp_path: Path) -> None:
    remote = DiskFloor(10**9, statvfs_free_space(str(tmp_path), "tcp://pi.local:2376"))
    assert remote.problem("pull") is None
    assert remote.unchecked == "the engine is not on this machine (DOCKER_HOST=tcp://pi.local:2376)"
    hidden = DiskFloor(10**9, statvfs_free_space("/no/such/docker-root", None))
    assert hidden.problem("pull") is None
    assert hidden.unchecked is not None and "/no/such/docker-root is not visible" in hidden.unchecked
    local = statvfs_free_space(str(tmp_path), "unix:///var/run/docker.sock")()
    assert isinstance(local, DiskReading) and local.path == str(tmp_path) and local.free > 0


def test_sizes_are_shown_short() -> None:
    assert format_size(1_234_567_890) == "1.2 GB"
    assert format_size(512) == "512 B"


def test_a_build_engine_elsewhere_is_not_read_from_this_machine(tmp_path: Path) -> None:
    floor = DiskFloor(10**9, engine_free_space(lambda: str(tmp_path), "tcp://builder.lan:2376"))
    assert floor.problem("checkout") is None
    assert floor.unchecked == "the engine is not on this machine (DOCKER_HOST=tcp://builder.lan:2376)"
