"""Folders 0700 and files 0600 whatever the umask: shared.private_files and the stores and logs using it.

Each case runs under a permissive umask (000 and 022, what a shell or a container gives an agent
started by hand) and a restrictive one (277, which would even take the owner's write bit), and reads
the modes back from the file system.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cd_agent.state import DeployState
from shared.logs import run_log
from shared.private_files import make_private_dirs, open_private_append, prepare_private_database
from shared.runstore import RunStore

ROOT = Path(__file__).resolve().parents[2]
UMASKS = [0o000, 0o022, 0o277]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_missing_folders_are_made_0700_and_existing_ones_left_alone(tmp_path: Path, mask: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with umask(mask):
        make_private_dirs(shared / "a" / "b")
        make_private_dirs(shared / "a" / "b")  # again: nothing to do, no error
    assert mode(shared) == 0o755
    assert mode(shared / "a") == 0o700
    assert mode(shared / "a" / "b") == 0o700


def test_a_file_in_the_way_of_a_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("not a folder")
    with pytest.raises(FileExistsError):
        make_private_dirs(tmp_path / "logs" / "ci")


def test_relative_paths_are_made_under_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with umask(0):
        make_private_dirs(Path("logs/ci"))
    assert mode(tmp_path / "logs") == 0o700
    assert mode(tmp_path / "logs" / "ci") == 0o700


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_appended_files_are_0600(tmp_path: Path, mask: int) -> None:
    path = tmp_path / "logs" / "run.log"
    with umask(mask):
        fd = open_private_append(path)
    os.write(fd, b"one\n")
    os.close(fd)
    with umask(mask):
        fd = open_private_append(path)
    os.write(fd, b"two\n")
    os.close(fd)
    assert path.read_text() == "one\ntwo\n"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700


def test_a_file_an_earlier_start_left_world_readable_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    wal = tmp_path / "runs.sqlite3-wal"
    for item in (path, wal):
        item.write_bytes(b"")
        item.chmod(0o644)
    prepare_private_database(path)
    os.close(open_private_append(tmp_path / "run.log"))
    assert (mode(path), mode(wal), mode(tmp_path / "run.log")) == (0o600, 0o600, 0o600)


def tree_modes(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): mode(path) for path in sorted(root.rglob("*"))}


@pytest.mark.parametrize("mask", [0o000, 0o022], ids=oct)
def test_run_store_database_and_its_wal_files_are_private(tmp_path: Path, mask: int) -> None:
    with umask(mask), RunStore(tmp_path / "state" / "ci" / "runs.sqlite3") as store:
        store.create(kind="ci", commit="a" * 40)
        modes = tree_modes(tmp_path)
    # WAL mode: the -wal and -shm files exist while the store is open.
    assert modes == {
        "state": 0o700,
        "state/ci": 0o700,
        "state/ci/runs.sqlite3": 0o600,
        "state/ci/runs.sqlite3-shm": 0o600,
        "state/ci/runs.sqlite3-wal": 0o600,
    }


@pytest.mark.parametrize("mask", [0o000, 0o022], ids=oct)
def test_deploy_state_database_is_private(tmp_path: Path, mask: int) -> None:
    with umask(mask), DeployState(tmp_path / "state" / "cd.sqlite3") as state:
        state.set_last_error("registry unreachable")
        modes = tree_modes(tmp_path)
    assert modes["state"] == 0o700
    assert {name: value for name, value in modes.items() if name.startswith("state/cd.sqlite3")} == {
        "state/cd.sqlite3": 0o600, "state/cd.sqlite3-shm": 0o600, "state/cd.sqlite3-wal": 0o600,
    }


@pytest.mark.parametrize("mask", [0o000, 0o022], ids=oct)
def test_run_logs_are_private(tmp_path: Path, mask: int) -> None:
    path = tmp_path / "logs" / "cd" / "2026-01-01_00-00-00_run-0001.log"
    with umask(mask), run_log(path, 1) as log:
        log.info("commit message of a private repository")
    assert "commit message of a private repository" in path.read_text()
    assert tree_modes(tmp_path) == {"logs": 0o700, "logs/cd": 0o700, "logs/cd/" + path.name: 0o600}



@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_a_database_this_user_may_only_read_is_left_for_sqlite_to_open() -> None:
    """Someone else's state (an admin's `cd-agent status` on the agent's files) is not an error here."""
    folder = Path(tempfile.mkdtemp(prefix="picicd-private-", dir="/tmp"))  # tmp_path is root-only
    try:
        folder.chmod(0o755)
        path = folder / "cd.sqlite3"
        path.write_bytes(b"")
        path.chmod(0o644)
        code = "import sys, pathlib, shared.private_files as p; p.prepare_private_database(pathlib.Path(sys.argv[1]))"
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        result = subprocess.run(
            [*nobody, sys.executable, "-c", code, str(path)],
            capture_output=True, text=True, timeout=30, check=False, cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        assert mode(path) == 0o644  # not ours to change
    finally:
        shutil.rmtree(folder)


def test_preparing_an_open_database_again_keeps_this_processs_locks_on_it(tmp_path):
    # Closing any descriptor of a file drops every POSIX lock the process holds on it: preparing the
    # database again (the CD status page opens the state the watcher has open) must not open it, or
    # SQLite's locks vanish from under the other connection ("disk I/O error").
    database = tmp_path / "cd.sqlite3"
    prepare_private_database(database)
    shm = tmp_path / "cd.sqlite3-shm"
    shm.write_bytes(b"\0" * 64)
    shm.chmod(0o644)
    handles = [open(path, "r+b") for path in (database, shm)]  # held for the whole test
    try:
        for handle in handles:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        prepare_private_database(database)
        probe = (
            "import fcntl, sys\n"
            "with open(sys.argv[1], 'r+b') as f:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"
        )
        for path in (database, shm):
            other = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, check=False)
            assert other.returncode != 0, f"{path.name}: another process locked it: this process's lock was dropped"
        assert stat.S_IMODE(shm.stat().st_mode) == 0o600  # still narrowed, by path
    finally:
        for handle in handles:
            handle.close()
