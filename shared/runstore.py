"""Run history: one SQLite file per agent (``STATE_DIR/runs.db``), safe to share between threads.

Run numbers come from ``INTEGER PRIMARY KEY AUTOINCREMENT``, so a number is never handed out twice,
not even after rows are deleted or the agent restarts. All times are timezone-aware UTC.

Each run records its ``scope``: whose run it is (the repository of a CI run, the app of a deploy).
A store made before scopes existed gains the column when it is opened, and its rows get
``default_scope`` (the name of the one repository or app that made them).

Timestamps the store sets by itself (everything else is the caller's job, through :meth:`RunStore.update`):
``created_at`` in :meth:`~RunStore.create`; ``started_at`` in :meth:`~RunStore.claim_next_queued`;
``finished_at`` in :meth:`~RunStore.mark_unfinished_interrupted` and :meth:`~RunStore.supersede_queued`.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args

from shared.errors import StoreError
from shared.private_files import prepare_private_database

# How a commit reaches the disk (SQLite's ``synchronous`` under WAL; see RunStore).
StoreSync = Literal["full", "normal"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "superseded", "interrupted"]
RUN_STATUSES: frozenset[str] = frozenset(get_args(RunStatus))
FINISHED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "superseded", "interrupted"})

_TEXT_FIELDS = ("kind", "scope", "commit", "ref", "version", "failed_step", "delivery_id", "log_path", "error")
_TIME_FIELDS = ("started_at", "finished_at")
UPDATABLE_FIELDS: frozenset[str] = frozenset({"status", "details", *_TEXT_FIELDS, *_TIME_FIELDS})
_NULLABLE = frozenset(UPDATABLE_FIELDS - {"status", "kind", "details"})
# Added after the first release: _migrate gives older files these columns.
_ADDED_COLUMNS = {"scope": "TEXT"}

# "commit" is an SQL keyword, hence "commit_sha" in the table.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    number       INTEGER PRIMARY KEY AUTOINCREMENT,
    status       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    commit_sha   TEXT,
    ref          TEXT,
    version      TEXT,
    failed_step  TEXT,
    delivery_id  TEXT,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    log_path     TEXT,
    error        TEXT,
    details      TEXT NOT NULL DEFAULT '{}',
    scope        TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_delivery ON runs (delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, kind);
CREATE INDEX IF NOT EXISTS runs_commit ON runs (commit_sha);
"""
_SCOPE_INDEX = "CREATE INDEX IF NOT EXISTS runs_scope ON runs (scope, status)"
_COLUMNS = {name: name for name in UPDATABLE_FIELDS} | {"commit": "commit_sha"}
_SELECT = (
    "SELECT number, status, kind, commit_sha, ref, version, failed_step, delivery_id, created_at,"
    " started_at, finished_at, log_path, error, details, scope FROM runs"
)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Run:
    number: int
    status: RunStatus
    kind: str
    commit: str | None
    ref: str | None
    version: str | None
    failed_step: str | None
    delivery_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    log_path: str | None
    error: str | None
    details: dict[str, Any] = field(default_factory=dict)
    scope: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def to_json(self, *, scope_key: str | None = None) -> dict[str, Any]:
        """The run as JSON-ready values: ISO-8601 UTC times, plus ``duration_seconds`` (null until finished).

        ``scope_key`` names the scope for the agent's readers (``"repo"``, ``"app"``); without it the
        scope is left out, as before scopes existed.
        """
        scope = {scope_key: self.scope} if scope_key is not None else {}
        return {
            "number": self.number,
            **scope,
            "status": self.status,
            "kind": self.kind,
            "commit": self.commit,
            "ref": self.ref,
            "version": self.version,
            "failed_step": self.failed_step,
            "delivery_id": self.delivery_id,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration_seconds": self.duration_seconds,
            "log_path": self.log_path,
            "error": self.error,
            # Why a run released nothing, and the run that superseded it (both null otherwise).
            "reason": self.details.get("reason"),
            "superseded_by": self.details.get("superseded_by"),
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Run:
        """The inverse of :meth:`to_json` (``duration_seconds`` is derived, so it is ignored)."""
        status = data["status"]
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}; expected one of {sorted(RUN_STATUSES)}")
        created_at = _parse_time(data["created_at"])
        if created_at is None:
            raise ValueError("created_at is required")
        return cls(
            number=int(data["number"]),
            status=status,
            kind=data["kind"],
            commit=data.get("commit"),
            ref=data.get("ref"),
            version=data.get("version"),
            failed_step=data.get("failed_step"),
            delivery_id=data.get("delivery_id"),
            created_at=created_at,
            started_at=_parse_time(data.get("started_at")),
            finished_at=_parse_time(data.get("finished_at")),
            log_path=data.get("log_path"),
            error=data.get("error"),
            details=dict(data.get("details") or {}),
            scope=data.get("scope", data.get("repo", data.get("app"))),
        )


class RunNotFound(StoreError, LookupError):
    """:meth:`RunStore.update` was given a run number that does not exist."""

    def __init__(self, number: int) -> None:
        super().__init__(f"run {number} does not exist")
        self.number = number


class DuplicateDelivery(StoreError):
    """A run for this webhook delivery id already exists (``existing``); no second run was created."""

    def __init__(self, existing: Run) -> None:
        super().__init__(f"delivery {existing.delivery_id!r} already has run {existing.number}")
        self.existing = existing


class RunStore:
    """The run history of one agent in a SQLite file (WAL mode; one connection guarded by a lock).

    ``sync`` says what a returned write survives. ``"full"`` (the default): each commit waits for
    the disk (an fsync of the WAL), so it survives a power cut. ``"normal"``: a commit is written to
    the WAL file without waiting for the disk; it survives the process crashing or being killed at
    any moment (the kernel holds the write), but a power cut or a kernel crash can lose the commits
    the kernel had not written back yet (it does within seconds: 5 s for ext4's journal, 30 s at the
    most for dirty pages by default; a checkpoint also syncs). The file stays consistent either way,
    it only loses its newest commits. An fsync costs ~0.3 ms on an idle SSD, 10 ms and more on a busy
    disk or an SD card.
    """

    def __init__(
        self, path: Path, *, clock: Callable[[], datetime] = utc_now, sync: StoreSync = "full",
        default_scope: str | None = None,
    ) -> None:
        if sync not in get_args(StoreSync):
            raise ValueError(f"unknown sync mode {sync!r}; expected one of {list(get_args(StoreSync))}")
        self.path = Path(path)
        self._clock = clock
        # Re-entrant so that `batch()` can hold one transaction around several store calls.
        self._lock = threading.RLock()
        self._batch_depth = 0
        try:
            # 0600 in a 0700 folder whatever the umask: commit messages and errors stay the agent's own.
            prepare_private_database(self.path)
        except OSError as exc:
            raise StoreError(f"cannot create the run store {self.path}: {exc}") from exc
        try:
            # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE), so a
            # read-then-write such as claim_next_queued is atomic even against another process.
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        self._conn.row_factory = sqlite3.Row
        try:
            # WAL lets readers (GET /runs, `cd-agent status`) work while the worker writes.
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={sync.upper()}")
            self._conn.executescript(_SCHEMA)
            self._migrate(default_scope)
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._error("cannot set up", exc) from exc

    def _migrate(self, default_scope: str | None) -> None:
        """Columns added since the file was made; rows without a scope get ``default_scope``."""
        conn = self._conn
        with self._lock:
            # Read first: a store that needs nothing takes no write lock (another process may hold it).
            have = {row["name"] for row in conn.execute("PRAGMA table_info(runs)")}
            missing = {name: kind for name, kind in _ADDED_COLUMNS.items() if name not in have}
            indexed = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs_scope'").fetchone() is not None
            unscoped_rows = "SELECT 1 FROM runs" if missing else "SELECT 1 FROM runs WHERE scope IS NULL"
            unscoped_rows += " LIMIT 1"
            unscoped = default_scope is not None and conn.execute(unscoped_rows).fetchone() is not None
            if not missing and indexed and not unscoped:
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                for name, kind in missing.items():
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
                conn.execute(_SCOPE_INDEX)
                if default_scope is not None:
                    conn.execute("UPDATE runs SET scope = ? WHERE scope IS NULL", (default_scope,))
                conn.commit()
            except BaseException:
                _rollback(conn)
                raise

    def adopt_all(self, scope: str) -> int:
        """Every run becomes ``scope``'s (an agent with one repository or app owns its whole history,
        whatever an earlier start named it); the number of runs renamed. Writes only when one differs."""
        with self._transaction(write=False) as conn:
            other = self._fetch_one(conn, " WHERE scope IS NOT ? LIMIT 1", (scope,))
        if other is None:
            return 0
        with self._transaction() as conn:
            return conn.execute("UPDATE runs SET scope = ? WHERE scope IS NOT ?", (scope, scope)).rowcount

    def __enter__(self) -> RunStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def create(
        self,
        *,
        kind: str,
        status: RunStatus = "queued",
        commit: str | None = None,
        ref: str | None = None,
        delivery_id: str | None = None,
        details: Mapping[str, Any] | None = None,
        scope: str | None = None,
    ) -> Run:
        """Record a new run; raises :class:`DuplicateDelivery` when ``delivery_id`` was seen before."""
        _check_status(status)
        _assignments({"kind": kind, "commit": commit, "ref": ref, "delivery_id": delivery_id, "scope": scope})
        if not kind:
            raise ValueError("a run needs a kind, e.g. 'ci' or 'deploy'")
        values = (
            status, kind, commit, ref, delivery_id, _store_time(self._clock()), _dump(dict(details or {})), scope
        )
        with self._transaction() as conn:
            if delivery_id is not None:
                existing = self._fetch_one(conn, " WHERE delivery_id = ?", (delivery_id,))
                if existing is not None:
                    raise DuplicateDelivery(existing)
            cursor = conn.execute(
                "INSERT INTO runs (status, kind, commit_sha, ref, delivery_id, created_at, details, scope)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            run = self._fetch_one(conn, " WHERE number = ?", (cursor.lastrowid,))
        if run is None:
            raise StoreError(f"run store {self.path} lost run {cursor.lastrowid} right after inserting it")
        return run

    def update(self, number: int, **fields: Any) -> Run:
        """Change the given fields of run ``number`` (``details`` is replaced as a whole).

        Unknown field names, unknown statuses, wrong types and naive datetimes raise ValueError;
        a run that does not exist raises :class:`RunNotFound`.
        """
        assignments = _assignments(fields)
        with self._transaction() as conn:
            if assignments:
                columns = ", ".join(f"{_COLUMNS[name]} = ?" for name in assignments)
                conn.execute(f"UPDATE runs SET {columns} WHERE number = ?", (*assignments.values(), number))  # noqa: S608 - column names come from UPDATABLE_FIELDS
            run = self._fetch_one(conn, " WHERE number = ?", (number,))
        if run is None:
            raise RunNotFound(number)
        return run

    def get(self, number: int) -> Run | None:
        with self._transaction(write=False) as conn:
            return self._fetch_one(conn, " WHERE number = ?", (number,))

    def list(
        self, *, limit: int = 100, status: str | None = None, kind: str | None = None, scope: str | None = None
    ) -> builtins.list[Run]:
        """Runs newest first, at most ``limit`` of them, optionally only those with ``status``/``kind``/``scope``."""
        if status is not None:
            _check_status(status)
        where, params = _filters(status=status, kind=kind, scope=scope)
        with self._transaction(write=False) as conn:
            return self._fetch(conn, f"{where} ORDER BY number DESC LIMIT ?", (*params, max(limit, 0)))

    def find_by_delivery(self, delivery_id: str) -> Run | None:
        with self._transaction(write=False) as conn:
            return self._fetch_one(conn, " WHERE delivery_id = ?", (delivery_id,))

    def find_released(self, kind: str, commit: str, *, scope: str | None = None) -> Run | None:
        """The newest ``succeeded`` run of ``kind`` (and ``scope``) that released ``commit`` (has a version)."""
        where = " WHERE kind = ? AND commit_sha = ? AND status = 'succeeded' AND version IS NOT NULL"
        params: tuple[Any, ...] = (kind, commit)
        if scope is not None:
            where += " AND scope = ?"
            params = (*params, scope)
        with self._transaction(write=False) as conn:
            return self._fetch_one(conn, where + " ORDER BY number DESC LIMIT 1", params)

    def find_failed(
        self, kind: str, ref: str, commit: str, *, step: str, scope: str | None = None
    ) -> builtins.list[Run]:
        """The runs of ``kind`` (and ``scope``) for ``ref`` that failed at ``step`` on ``commit``, newest first.

        For a tag, ``commit`` also matches the ``after`` of the push event kept in ``details["event"]``:
        an annotated tag's push names the tag object, and its run records the commit it tags.
        """
        where = " WHERE commit_sha = ? AND kind = ? AND ref = ? AND status = 'failed' AND failed_step = ?"
        params: tuple[Any, ...] = (commit, kind, ref, step)
        if ref.startswith("refs/tags/"):
            where = (
                " WHERE kind = ? AND ref = ? AND status = 'failed' AND failed_step = ?"
                " AND (commit_sha = ? OR json_extract(details, '$.event.after') = ?)"
            )
            params = (kind, ref, step, commit, commit)
        if scope is not None:
            where += " AND scope = ?"
            params = (*params, scope)
        with self._transaction(write=False) as conn:
            return self._fetch(conn, where + " ORDER BY number DESC LIMIT 100", params)

    def mark_unfinished_interrupted(self, *, kind: str | None = None) -> builtins.list[Run]:
        """At start-up: every running run (of ``kind``) becomes ``interrupted``, finished now.

        Queued runs stay queued: they never started, and their push is stored, so a restarted
        agent still runs them.
        """
        return self._finish_where("interrupted", " WHERE status = 'running'", kind=kind)

    def claim_next_queued(self, kind: str | None = None) -> Run | None:
        """Atomically turn the oldest queued run (of ``kind``) into a running one, started now."""
        where, params = _filters(status="queued", kind=kind)
        with self._transaction() as conn:
            oldest = self._fetch_one(conn, f"{where} ORDER BY number ASC LIMIT 1", params)
            if oldest is None:
                return None
            return self._claim(conn, oldest.number)

    def claim_queued(self, number: int) -> Run | None:
        """Atomically turn run ``number`` into a running one, started now, if it is still queued; else None."""
        with self._transaction() as conn:
            if self._fetch_one(conn, " WHERE number = ? AND status = 'queued'", (number,)) is None:
                return None
            return self._claim(conn, number)

    def _claim(self, conn: sqlite3.Connection, number: int) -> Run | None:
        conn.execute(
            "UPDATE runs SET status = 'running', started_at = ? WHERE number = ?", (_store_time(self._clock()), number)
        )
        return self._fetch_one(conn, " WHERE number = ?", (number,))

    def oldest_queued_per_scope(self, kind: str) -> builtins.list[Run]:
        """For each scope with queued runs of ``kind``, its oldest queued run; oldest first."""
        with self._transaction(write=False) as conn:
            return self._fetch(
                conn,
                " WHERE number IN (SELECT MIN(number) FROM runs WHERE status = 'queued' AND kind = ? GROUP BY scope)"
                " ORDER BY number ASC",
                (kind,),
            )

    def running_scopes(self, kind: str) -> set[str | None]:
        """The scopes that have a run of ``kind`` running now."""
        with self._transaction(write=False) as conn:
            return {run.scope for run in self._fetch(conn, " WHERE status = 'running' AND kind = ?", (kind,))}

    def supersede_queued(
        self, kind: str, ref: str | None, except_number: int, *, commit: str | None = None, scope: str | None = None
    ) -> builtins.list[Run]:
        """Queued runs of ``kind`` for ``ref`` OLDER than ``except_number`` become ``superseded``, finished now.

        Only older ones: if two pushes race, the later one must never be superseded by the earlier.
        With ``commit``, only the runs for that commit; with ``scope``, only that scope's. Each one
        records ``details["superseded_by"]``.
        """
        where = " WHERE status = 'queued' AND kind = ? AND ref IS ? AND number < ?"
        params: tuple[Any, ...] = (kind, ref, except_number)
        if scope is not None:
            where += " AND scope = ?"
            params = (*params, scope)
        if commit is not None:
            where += " AND commit_sha = ?"
            params = (*params, commit)
        with self._transaction() as conn:
            runs = self._fetch(conn, f"{where} ORDER BY number ASC", params)
            return [
                run for run in (self._supersede(conn, run.number, except_number, None) for run in runs)
                if run is not None
            ]

    def supersede_run(self, number: int, *, by: int | None, reason: str | None) -> Run | None:
        """Run ``number`` becomes ``superseded`` by run ``by`` (finished now) if it is still queued; else None."""
        with self._transaction() as conn:
            return self._supersede(conn, number, by, reason)

    def _supersede(self, conn: sqlite3.Connection, number: int, by: int | None, reason: str | None) -> Run | None:
        run = self._fetch_one(conn, " WHERE number = ? AND status = 'queued'", (number,))
        if run is None:
            return None
        details = dict(run.details)
        if by is not None:
            details["superseded_by"] = by
        if reason is not None:
            details["reason"] = reason
        conn.execute(
            "UPDATE runs SET status = 'superseded', finished_at = ?, details = ? WHERE number = ?",
            (_store_time(self._clock()), _dump(details), number),
        )
        return self._fetch_one(conn, " WHERE number = ?", (number,))

    def _finish_where(
        self, status: RunStatus, where: str, *, params: tuple[Any, ...] = (), kind: str | None = None
    ) -> builtins.list[Run]:
        if kind is not None:
            where += " AND kind = ?"
            params = (*params, kind)
        with self._transaction() as conn:
            runs = self._fetch(conn, f"{where} ORDER BY number ASC", params)
            now = _store_time(self._clock())
            for run in runs:
                conn.execute(
                    "UPDATE runs SET status = ?, finished_at = ? WHERE number = ?", (status, now, run.number)
                )
            numbers = [run.number for run in runs]
            if not numbers:
                return []
            marks = ", ".join("?" * len(numbers))
            return self._fetch(conn, f" WHERE number IN ({marks}) ORDER BY number ASC", numbers)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run every store call made inside (by this thread) in one transaction: one commit, one fsync.

        With ``sync="full"`` each commit waits for the disk; the webhook batches what concurrent
        deliveries write so a burst of them costs a few waits. A call that fails inside is undone
        alone (a savepoint); the others still commit.
        """
        with self._transaction():
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1

    @contextmanager
    def batch_if_free(self) -> Iterator[bool]:
        """:meth:`batch` if no other thread is using the store at this moment; else yields False at once.

        For an event loop, which must not wait for another thread's writes. (Another *process*
        writing the same file still makes it wait, as every call does: a transaction there takes
        milliseconds.)
        """
        if not self._lock.acquire(blocking=False):
            yield False
            return
        try:
            with self.batch():
                yield True
        finally:
            self._lock.release()

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._batch_depth > 0:
                with self._savepoint() as conn:
                    yield conn
                return
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.ProgrammingError as exc:
                raise StoreError(f"the run store {self.path} is closed") from exc
            except sqlite3.Error as exc:
                raise self._error("cannot use", exc) from exc
            try:
                yield conn
                conn.commit()
            except sqlite3.Error as exc:
                _rollback(conn)
                raise self._error("cannot write" if write else "cannot read", exc) from exc
            except BaseException:
                _rollback(conn)
                raise

    @contextmanager
    def _savepoint(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute("SAVEPOINT batch_item")
        except sqlite3.Error as exc:
            raise self._error("cannot use", exc) from exc
        try:
            yield conn
            conn.execute("RELEASE batch_item")
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK TO batch_item")
                conn.execute("RELEASE batch_item")
            except sqlite3.Error:
                pass  # the outer transaction's rollback undoes it anyway
            if isinstance(exc, sqlite3.Error):
                raise self._error("cannot write", exc) from exc
            raise

    def _fetch(self, conn: sqlite3.Connection, where: str, params: Any) -> builtins.list[Run]:
        try:
            return [_row_to_run(row) for row in conn.execute(_SELECT + where, params).fetchall()]
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from exc

    def _fetch_one(self, conn: sqlite3.Connection, where: str, params: Any) -> Run | None:
        runs = self._fetch(conn, where, params)
        return runs[0] if runs else None

    def _error(self, action: str, exc: sqlite3.Error) -> StoreError:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            return StoreError(f"the run store {self.path} is not a SQLite database or is corrupt: {exc}")
        return StoreError(f"{action} the run store {self.path}: {exc}")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.rollback()


def _filters(*, status: str | None, kind: str | None, scope: str | None = None) -> tuple[str, tuple[Any, ...]]:
    clauses = []
    params: list[Any] = []
    if status is not None:
        clauses.append("status = ?")
        params.append(status)
    if kind is not None:
        clauses.append("kind = ?")
        params.append(kind)
    if scope is not None:
        clauses.append("scope = ?")
        params.append(scope)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _check_status(status: object) -> None:
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}; expected one of {sorted(RUN_STATUSES)}")


def _assignments(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(fields) - UPDATABLE_FIELDS)
    if unknown:
        raise ValueError(f"cannot update run field(s) {', '.join(unknown)}; updatable: {sorted(UPDATABLE_FIELDS)}")
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None and name in _NULLABLE:
            values[name] = None
        elif name == "status":
            _check_status(value)
            values[name] = value
        elif name == "details":
            if not isinstance(value, Mapping):
                raise ValueError(f"details must be a dict, not {type(value).__name__}")
            values[name] = _dump(dict(value))
        elif name in _TIME_FIELDS:
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise ValueError(f"{name} must be a timezone-aware datetime, not {value!r}")
            values[name] = _store_time(value)
        elif isinstance(value, str):
            values[name] = value
        else:
            raise ValueError(f"{name} must be a string{' or None' if name in _NULLABLE else ''}, not {value!r}")
    return values


def _dump(details: dict[str, Any]) -> str:
    try:
        return json.dumps(details)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"details must be JSON-serialisable: {exc}") from exc


def _store_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}; the run store keeps timezone-aware UTC times")
    return moment.astimezone(UTC).isoformat()


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _row_to_run(row: sqlite3.Row) -> Run:
    created = _parse_time(row["created_at"])
    if created is None:  # the column is NOT NULL; this keeps mypy's view honest
        raise StoreError(f"run {row['number']} has no created_at")
    return Run(
        number=row["number"],
        status=row["status"],
        kind=row["kind"],
        commit=row["commit_sha"],
        ref=row["ref"],
        version=row["version"],
        failed_step=row["failed_step"],
        delivery_id=row["delivery_id"],
        created_at=created,
        started_at=_parse_time(row["started_at"]),
        finished_at=_parse_time(row["finished_at"]),
        log_path=row["log_path"],
        error=row["error"],
        details=json.loads(row["details"]),
        scope=row["scope"],
    )
