"""The CD listener's read connections to the apps' state files: opened at the first look, then kept.

A page view, a badge or a scrape of ``/metrics`` must write nothing to a Pi's SD card. Opening a SQLite
file in WAL mode that no connection of the process has open rebuilds its wal-index (the ``-shm`` file,
32 KiB written), and closing the last connection checkpoints the WAL and deletes both files: 32 KiB and
more per file per view (``bench/idle_writes.py`` measures it). A read-only open (``mode=ro``) rebuilds
the wal-index all the same. So each file is opened once, at the first look that finds it, and stays open
until its app leaves the targets (a reload), the file is replaced (another inode under the same name) or
the listener stops. The watcher's own connection to an app's deploy state does not count on: an app
whose watch thread has stopped still has its pages.

Nothing is created by looking: a file that does not exist yields None. The files are only ever opened
and closed through SQLite (a stat tells a replaced file), never by a descriptor of our own, whose close
would drop the process's locks on them. One lock over every use: a reader is never closed while
another request reads through it (page views take milliseconds; a Pi's status page is not busy).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from cd_agent.state import DeployState
from shared.runstore import RunStore


class _Closable(Protocol):
    def close(self) -> None: ...


_Reader = TypeVar("_Reader", bound=_Closable)


class _Kept(Generic[_Reader]):
    """Open readers of one kind, by path, with the identity (device, inode) of the file each one opened."""

    def __init__(self, open_reader: Callable[[Path], _Reader]) -> None:
        self._open_reader = open_reader
        self._readers: dict[Path, tuple[tuple[int, int], _Reader]] = {}

    def get(self, path: Path) -> _Reader | None:
        try:
            found = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self.drop(path)
            return None
        identity = (found.st_dev, found.st_ino)
        kept = self._readers.get(path)
        if kept is not None and kept[0] == identity:
            return kept[1]
        self.drop(path)
        reader = self._open_reader(path)
        self._readers[path] = (identity, reader)
        return reader

    def drop(self, path: Path) -> None:
        kept = self._readers.pop(path, None)
        if kept is not None:
            kept[1].close()

    def retain(self, paths: set[Path]) -> None:
        for path in [path for path in self._readers if path not in paths]:
            self.drop(path)


class StateReaders:
    """Kept-open readers of deploy states (``cd.sqlite3``) and run stores (``runs.sqlite3``)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._states: _Kept[DeployState] = _Kept(DeployState)
        self._runs: _Kept[RunStore] = _Kept(RunStore)

    @contextmanager
    def deploy_state(self, path: Path) -> Iterator[DeployState | None]:
        """The deploy state at ``path``, None when there is none (yet); use it only inside the block."""
        with self._lock:
            yield self._states.get(path)

    @contextmanager
    def runs(self, path: Path) -> Iterator[RunStore | None]:
        """The run store at ``path``, None when there is none (yet); use it only inside the block."""
        with self._lock:
            yield self._runs.get(path)

    def retain(self, paths: Iterable[Path]) -> None:
        """Close the readers of every file but ``paths`` (those of the apps watched now)."""
        wanted = set(paths)
        with self._lock:
            self._states.retain(wanted)
            self._runs.retain(wanted)

    def close(self) -> None:
        self.retain(())
