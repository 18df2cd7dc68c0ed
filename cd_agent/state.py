"""What the CD agent knows between runs: deployed releases, quarantine, polls, an in-progress deploy.

One SQLite file under ``STATE_DIR`` (``cd.sqlite3``). The *journal* is the record of a deploy that
has started and not finished: every phase is written before the next Docker call, so after a crash
(``SIGKILL``, power cut) ``Deployer.reconcile()`` knows which containers exist, under which names,
and whether the new one was already proven healthy::

    pulled -> old_renamed -> created -> old_stopped -> new_started -> verdict              (swap)
    bg_pulled -> bg_created -> bg_started -> bg_proven -> bg_switched -> bg_retired        (blue-green)

The swap no longer writes ``old_stopped`` (it would sit in the app's outage, between the stop and the
start); a journal at ``created`` covers that step, and one at ``old_stopped`` left by an older agent is
still read and undone like the other steps before the verdict.

All sqlite3 errors become ``StateError``. One connection guarded by a lock: the watcher thread and
the command line may share an instance.

Poll bookkeeping (last poll, next poll, last error) is what an idle watcher would write on every poll,
wearing an SD card for nothing. With ``poll_flush_interval`` (``CD_STATE_FLUSH_INTERVAL``, what
``cd-agent watch`` passes) it is kept in memory, read back from there by this process, and written at
most once per interval (the first poll at once, whole, so ``cd-agent status`` soon shows it) and at ``close``;
``0`` writes it at every change, as before. Everything else (releases, quarantine, journal) is written
and committed at once, always.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cd_agent.errors import StateError
from shared.private_files import prepare_private_database

Phase = Literal[
    "pulled", "old_renamed", "created", "old_stopped", "new_started", "verdict",
    "bg_pulled", "bg_created", "bg_started", "bg_proven", "bg_switched", "bg_retired",
]
SWAP_PHASES: tuple[Phase, ...] = ("pulled", "old_renamed", "created", "old_stopped", "new_started", "verdict")
BLUE_GREEN_PHASES: tuple[Phase, ...] = (
    "bg_pulled", "bg_created", "bg_started", "bg_proven", "bg_switched", "bg_retired",
)
PHASES: tuple[Phase, ...] = SWAP_PHASES + BLUE_GREEN_PHASES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    slot TEXT PRIMARY KEY CHECK (slot IN ('current', 'previous')),
    version TEXT NOT NULL,
    digest TEXT,
    container_id TEXT,
    deployed_at TEXT
);
CREATE TABLE IF NOT EXISTS quarantine (
    version TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    since TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS polls (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_poll_at TEXT,
    next_poll_at TEXT,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    run INTEGER,
    version TEXT NOT NULL,
    digest TEXT,
    phase TEXT NOT NULL,
    container_name TEXT NOT NULL,
    old_container_id TEXT,
    old_version TEXT,
    old_digest TEXT,
    old_renamed_to TEXT,
    new_container_id TEXT,
    healthy INTEGER,
    started_at TEXT NOT NULL,
    strategy TEXT
);
"""
_POLL_COLUMNS = ("last_poll_at", "next_poll_at", "last_error")
# State file -> the poll bookkeeping a watcher of this process keeps in memory (CD_STATE_FLUSH_INTERVAL).
_UNWRITTEN_POLLS: dict[Path, dict[str, str | None]] = {}
# Columns added since the first release, for state files an older agent created.
_ADDED_COLUMNS = (("journal", "strategy", "TEXT"),)


@dataclass(frozen=True)
class Release:
    """A deployed version: its image digest and the container that ran (or runs) it."""

    version: str
    digest: str | None = None
    container_id: str | None = None
    deployed_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "digest": self.digest,
            "container_id": self.container_id,
            "deployed_at": _iso(self.deployed_at),
        }


@dataclass(frozen=True)
class Quarantine:
    """A version that failed (or was rolled back by hand) and is not tried again unless forced."""

    version: str
    reason: str
    since: datetime

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "reason": self.reason, "since": _iso(self.since)}


@dataclass(frozen=True)
class Journal:
    """The deploy in progress. ``old_*`` describe the container being replaced (None on a first deploy)."""

    version: str
    container_name: str
    phase: Phase
    started_at: datetime
    run: int | None = None
    digest: str | None = None
    old_container_id: str | None = None
    old_version: str | None = None
    old_digest: str | None = None
    old_renamed_to: str | None = None
    new_container_id: str | None = None
    healthy: bool | None = None
    # CD_STRATEGY of the deploy that wrote it (None: written by an agent older than the column)
    strategy: str | None = None

    @property
    def proven_healthy(self) -> bool:
        return self.phase == "verdict" and self.healthy is True


class DeployState:
    """The deploy state database at ``path`` (created with its parent directories).

    ``poll_flush_interval``: seconds between writes of the poll bookkeeping (see the module); ``monotonic``
    is injected so a test can move time."""

    def __init__(
        self, path: Path, *, poll_flush_interval: float = 0.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._flush_interval = poll_flush_interval
        self._monotonic = monotonic
        self._polls: dict[str, str | None] | None = None  # the bookkeeping as this process knows it
        self._polls_dirty = False
        self._polls_flushed_at: float | None = None
        # The first poll is written whole (last poll or error, and the next poll), so `cd-agent status`
        # shows it at once; after that, at most once per interval.
        self._first_poll_written = False
        try:
            prepare_private_database(path)  # 0600 in a 0700 folder, whatever the umask
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            _add_columns(self._db)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open the deploy state {path}: {exc}") from exc

    def close(self) -> None:
        """Write the poll bookkeeping still in memory, then close (a failed write is not worth a crash)."""
        try:
            self.flush_polls()
        except StateError:
            pass
        if self._polls is not None and _UNWRITTEN_POLLS.get(self.path) is self._polls:
            del _UNWRITTEN_POLLS[self.path]
        with self._lock:
            self._db.close()

    def __enter__(self) -> DeployState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StateError(f"deploy state {self.path}: {exc}") from exc

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cursor = self._db.execute(sql, params)
                cursor.row_factory = sqlite3.Row
                return cursor.fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"deploy state {self.path}: {exc}") from exc

    # releases

    @property
    def current(self) -> Release | None:
        return self._release("current")

    @property
    def previous(self) -> Release | None:
        return self._release("previous")

    def _release(self, slot: str) -> Release | None:
        rows = self._query("SELECT * FROM releases WHERE slot = ?", (slot,))
        if not rows:
            return None
        row = rows[0]
        return Release(row["version"], row["digest"], row["container_id"], _parse(row["deployed_at"]))

    def set_current(self, release: Release | None) -> None:
        with self._transaction() as db:
            _write_release(db, "current", release)

    def set_previous(self, release: Release | None) -> None:
        with self._transaction() as db:
            _write_release(db, "previous", release)

    def record_deployed(self, current: Release, previous: Release | None) -> None:
        """A deploy (or rollback) finished: both slots and the end of the journal in one transaction."""
        with self._transaction() as db:
            _write_release(db, "current", current)
            _write_release(db, "previous", previous)
            db.execute("DELETE FROM journal")

    # quarantine

    @property
    def quarantined(self) -> dict[str, Quarantine]:
        rows = self._query("SELECT * FROM quarantine ORDER BY since")
        return {row["version"]: Quarantine(row["version"], row["reason"], _required(row["since"])) for row in rows}

    @property
    def quarantined_versions(self) -> set[str]:
        return set(self.quarantined)

    def is_quarantined(self, version: str) -> bool:
        return bool(self._query("SELECT 1 FROM quarantine WHERE version = ?", (version,)))

    def quarantine(self, version: str, reason: str, *, since: datetime | None = None) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO quarantine (version, reason, since) VALUES (?, ?, ?)",
                (version, reason, _iso(since or datetime.now(UTC))),
            )

    def release_quarantine(self, version: str) -> bool:
        """Take ``version`` out of quarantine; False when it was not quarantined."""
        with self._transaction() as db:
            return db.execute("DELETE FROM quarantine WHERE version = ?", (version,)).rowcount > 0

    # polls (written by the watcher, shown by `cd-agent status`)

    @property
    def last_poll_at(self) -> datetime | None:
        return _parse(self._poll_value("last_poll_at"))

    @property
    def next_poll_at(self) -> datetime | None:
        return _parse(self._poll_value("next_poll_at"))

    @property
    def last_error(self) -> str | None:
        return self._poll_value("last_error")

    def _poll_value(self, column: str) -> str | None:
        # The watcher's bookkeeping not yet written: this instance's, or (the status page of the watcher's
        # process opens its own) that of the instance of the same file in this process.
        polls = self._polls if self._polls is not None else _UNWRITTEN_POLLS.get(self.path)
        if polls is not None:
            return polls[column]
        rows = self._query(f"SELECT {column} FROM polls WHERE id = 1")  # noqa: S608  # column is one of ours
        return rows[0][0] if rows else None

    def set_last_poll_at(self, at: datetime | None) -> None:
        self._set_poll("last_poll_at", _iso(at))

    def set_next_poll_at(self, at: datetime | None) -> None:
        self._set_poll("next_poll_at", _iso(at))

    def set_last_error(self, error: str | None) -> None:
        self._set_poll("last_error", error)

    def _set_poll(self, column: str, value: str | None) -> None:
        if self._flush_interval <= 0:
            with self._transaction() as db:
                db.execute("INSERT OR IGNORE INTO polls (id) VALUES (1)")
                db.execute(f"UPDATE polls SET {column} = ? WHERE id = 1", (value,))  # noqa: S608  # column is ours
            return
        if self._polls is None:
            self._polls = {name: self._poll_value(name) for name in _POLL_COLUMNS}
            _UNWRITTEN_POLLS[self.path] = self._polls
        if self._polls[column] == value:
            return
        self._polls[column] = value
        self._polls_dirty = True
        flushed = self._polls_flushed_at
        if not self._first_poll_written or flushed is None or self._monotonic() - flushed >= self._flush_interval:
            self.flush_polls()

    def flush_polls(self) -> None:
        """Write the poll bookkeeping kept in memory, if it changed since it was last written."""
        if self._polls is None or not self._polls_dirty:
            return
        values = self._polls
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO polls (id) VALUES (1)")
            db.execute(
                "UPDATE polls SET last_poll_at = ?, next_poll_at = ?, last_error = ? WHERE id = 1",
                (values["last_poll_at"], values["next_poll_at"], values["last_error"]),
            )
        self._polls_dirty = False
        self._polls_flushed_at = self._monotonic()
        self._first_poll_written = self._first_poll_written or values["next_poll_at"] is not None

    # journal of the deploy in progress

    @property
    def journal(self) -> Journal | None:
        with self._lock:
            try:
                return self._journal_unlocked(self._db)
            except sqlite3.Error as exc:
                raise StateError(f"deploy state {self.path}: {exc}") from exc

    def begin_journal(self, journal: Journal) -> None:
        """Start recording a deploy; a journal left by an earlier deploy must be reconciled first."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM journal").fetchone() is not None:
                raise StateError("a deploy is already in progress (or was interrupted): reconcile first")
            _write_journal(db, journal)

    def update_journal(self, **changes: Any) -> Journal:
        """Record the next phase (and any ids learnt); returns the journal as now stored."""
        with self._transaction() as db:
            current = self._journal_unlocked(db)
            if current is None:
                raise StateError("no deploy in progress to update")
            updated = replace(current, **changes)
            db.execute("DELETE FROM journal")
            _write_journal(db, updated)
            return updated

    def _journal_unlocked(self, db: sqlite3.Connection) -> Journal | None:
        cursor = db.execute("SELECT * FROM journal WHERE id = 1")
        names = [description[0] for description in cursor.description]
        row = cursor.fetchone()
        if row is None:
            return None
        values = dict(zip(names, row, strict=True))
        known = {f.name for f in fields(Journal)}
        args = {key: value for key, value in values.items() if key in known}
        args["started_at"] = _required(args["started_at"])
        args["healthy"] = None if args["healthy"] is None else bool(args["healthy"])
        return Journal(**args)

    def clear_journal(self) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM journal")

    def to_json(self) -> dict[str, Any]:
        """Everything ``cd-agent status --json`` shows."""
        current, previous, journal = self.current, self.previous, self.journal
        return {
            "current": current.to_json() if current else None,
            "previous": previous.to_json() if previous else None,
            "quarantined": [q.to_json() for q in self.quarantined.values()],
            "last_poll_at": _iso(self.last_poll_at),
            "next_poll_at": _iso(self.next_poll_at),
            "last_error": self.last_error,
            "deploy_in_progress": None if journal is None else {"version": journal.version, "phase": journal.phase},
        }


def _write_release(db: sqlite3.Connection, slot: str, release: Release | None) -> None:
    if release is None:
        db.execute("DELETE FROM releases WHERE slot = ?", (slot,))
        return
    db.execute(
        "INSERT OR REPLACE INTO releases (slot, version, digest, container_id, deployed_at) VALUES (?, ?, ?, ?, ?)",
        (slot, release.version, release.digest, release.container_id, _iso(release.deployed_at)),
    )


def _write_journal(db: sqlite3.Connection, journal: Journal) -> None:
    if journal.phase not in PHASES:
        raise StateError(f"unknown deploy phase {journal.phase!r}")
    db.execute(
        "INSERT INTO journal (id, run, version, digest, phase, container_name, old_container_id, old_version,"
        " old_digest, old_renamed_to, new_container_id, healthy, started_at, strategy)"
        " VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            journal.run, journal.version, journal.digest, journal.phase, journal.container_name,
            journal.old_container_id, journal.old_version, journal.old_digest, journal.old_renamed_to,
            journal.new_container_id, None if journal.healthy is None else int(journal.healthy),
            _iso(journal.started_at), journal.strategy,
        ),
    )


def _add_columns(db: sqlite3.Connection) -> None:
    for table, column, kind in _ADDED_COLUMNS:
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def _parse(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _required(value: str | None) -> datetime:
    parsed = _parse(value)
    if parsed is None:
        raise StateError("deploy state: a timestamp that must be set is missing")
    return parsed
