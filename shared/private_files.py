"""Folders and files only the agent's own user can read, whatever umask the agent was started with.

Run logs and state hold test and build output, git errors, absolute paths and commit messages of
what may be a private repository. Under systemd the unit's ``UMask`` keeps them private; started from
a shell (umask 022, or 000 in some containers) they would be world-readable. So every folder an
agent *creates* is 0700 and every file it creates is 0600, set with ``chmod`` after creation because
a umask only ever clears bits and cannot be relied on either way.

Folders that already exist keep their mode: ``LOG_DIR`` may be a folder the operator chose and
shares (``/var/log/...``, a volume). Files the agent owns are narrowed to 0600 when opened, so an
installation that wrote them 0644 before is fixed by its next start.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# SQLite's companions of a database file; SQLite gives new ones the database's own mode.
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and any missing parents, each 0700; folders that already exist are left alone.

    Raises ``OSError`` (e.g. ``PermissionError``) when a folder cannot be created.
    """
    missing: list[Path] = []
    current = Path(path)
    while not current.is_dir() and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # made meanwhile by another thread or process, which sets its mode
        os.chmod(folder, PRIVATE_DIR_MODE)


def narrow_to_private(fd: int) -> None:
    """Make the open file ``fd`` mode 0600 unless it already is.

    A file owned by another user (root reading an agent's state, say) cannot be changed and is left
    as it is: narrowing is a fix-up, never a reason to fail.
    """
    if os.fstat(fd).st_mode & 0o777 == PRIVATE_FILE_MODE:
        return
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except PermissionError:
        pass


def open_private_append(path: Path) -> int:
    """A descriptor appending to ``path``, created 0600 with its missing folders 0700; caller closes it."""
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        narrow_to_private(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def prepare_private_database(path: Path) -> None:
    """Make ``path`` an existing 0600 file (empty if new, which SQLite takes as an empty database).

    Run before ``sqlite3.connect``: SQLite creates a new database with mode 0644 & ~umask, and gives
    its ``-wal``/``-shm``/``-journal`` files the database's mode. Companions left from an earlier,
    wider-open start are narrowed too.

    An existing file is narrowed by path, never opened: closing any descriptor of a file drops every
    POSIX lock this *process* holds on it, so opening and closing a database (or its ``-shm``) that
    another connection of the process has open pulled SQLite's locks from under it ("disk I/O error"
    in the CD status page's reads while the watcher wrote).
    """
    make_private_dirs(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except FileExistsError:
        _narrow_path(path)
    except OSError as exc:
        # Someone else's folder, or a read-only file system: SQLite may still open an existing database
        # for reading, and says what is wrong if it cannot. A database that could not be created is an error.
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and path.is_file():
            return
        raise
    else:
        try:
            narrow_to_private(fd)
        finally:
            os.close(fd)  # a new file: no lock of this process on it yet
    for suffix in SQLITE_SIDECARS:
        _narrow_path(path.with_name(path.name + suffix))


def _narrow_path(path: Path) -> None:
    """``chmod 600`` a regular file that exists and is wider; anything else (absent, a link, not ours) is left."""
    try:
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) != PRIVATE_FILE_MODE:
            os.chmod(path, PRIVATE_FILE_MODE)
    except OSError:
        pass  # a fix-up, never a reason to fail: SQLite reports what matters
