"""Logging set-up for both agents: a console sink, one file per run, and secret redaction.

Library code only does ``from loguru import logger`` and ``logger.bind(...)``; sinks are added here,
once per agent process (``configure_logging``) and once per run (``run_log``). Every sink is a
callable that receives the fully formatted text, exception traceback included, and replaces each
configured secret with ``***`` before writing, so a token that ends up in an error message or a
traceback never reaches the console or a file.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from loguru import logger

from shared.private_files import open_private_append

if TYPE_CHECKING:
    import loguru

MASK = "***"
RUN_LOG_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_run-(\d{4,})\.log$")

# loguru appends the line end and the exception to a format string (not to a format function).
_FILE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS!UTC} | {level: <8} | {message}"


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    # Longest first, so a secret that contains a shorter one is masked whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class _Config:
    """What ``configure_logging`` set; read by every sink, so new secrets reach sinks added earlier."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secrets: tuple[str, ...] = ()
        self.level = "INFO"
        self.console_sink_id: int | None = None
        self.configured = False


_config = _Config()


def _redacting_writer(stream: TextIO) -> Callable[[loguru.Message], None]:
    def write(message: loguru.Message) -> None:
        stream.write(redact(str(message), _config.secrets))
        stream.flush()

    return write


def _console_format(record: loguru.Record) -> str:
    extra = record["extra"]
    where = "{extra[agent]}" if "agent" in extra else "-"
    if extra.get("scope"):
        where += " {extra[scope]}"
    if "run" in extra:
        where += " run {extra[run]}"
    return "{time:YYYY-MM-DD HH:mm:ss.SSS!UTC} | {level: <8} | " + where + " | {message}\n{exception}"


def configure_logging(
    agent: str, secrets: Iterable[str], *, level: str = "INFO", console: TextIO | None = sys.stderr
) -> None:
    """Set up logging for an agent process: console sink at ``level``, redaction of ``secrets``.

    Calling it again replaces the console sink and the secrets (run-log sinks already open stay and
    pick up the new secrets). ``console=None`` adds no console sink.
    """
    with _config.lock:
        previous = _config.console_sink_id if _config.configured else 0  # 0 is loguru's default sink
        if previous is not None:
            try:
                logger.remove(previous)
            except ValueError:
                pass  # someone already removed it (e.g. logger.remove() in a test)
        _config.secrets = tuple(s for s in secrets if s)
        _config.level = level
        _config.configured = True
        logger.configure(extra={"agent": agent})
        _config.console_sink_id = None
        if console is not None:
            _config.console_sink_id = logger.add(
                _redacting_writer(console), level=level, format=_console_format, backtrace=False, diagnose=False
            )


def run_log_path(log_dir: Path, started_at: datetime, number: int) -> Path:
    """``LOG_DIR/YYYY-MM-DD_HH-MM-SS_run-NNNN.log`` in UTC; a naive ``started_at`` is taken as UTC."""
    if number < 0:
        raise ValueError(f"run number must not be negative, got {number}")
    if started_at.tzinfo is None:
        started_at = started_at.replace(tzinfo=UTC)
    stamp = started_at.astimezone(UTC).strftime("%Y-%m-%d_%H-%M-%S")
    return log_dir / f"{stamp}_run-{number:04d}.log"


def _file_level() -> int:
    # A run log is what a failure email quotes: keep INFO even when the console is set quieter.
    return min(logger.level(_config.level).no, logger.level("INFO").no)


@contextmanager
def run_log(path: Path, run: int, scope: str = "") -> Iterator[loguru.Logger]:
    """Send every record bound with ``run=run`` and ``scope=scope`` (from any thread) to ``path``.

    ``scope`` names whose run it is (an app or a repository): run numbers count per app / repository,
    so two of them can have a run 7 at the same time and each record must reach its own file only.

    The file exists as soon as the block starts (so ``GET /runs/N/log`` can serve it) and is closed
    when the block ends; it is created 0600 and missing folders 0700, whatever the umask (see
    ``shared.private_files``). Yields ``logger.bind(run=run, scope=scope)``.
    """
    # 0600 in a 0700 folder: test output, git errors and commit messages are nobody else's business.
    stream = os.fdopen(open_private_append(path), "a", encoding="utf-8")
    try:
        sink_id = logger.add(
            _redacting_writer(stream),
            level=_file_level(),
            format=_FILE_FORMAT,
            filter=lambda record: record["extra"].get("run") == run and record["extra"].get("scope", "") == scope,
            backtrace=False,
            diagnose=False,
        )
        try:
            yield logger.bind(run=run, scope=scope)
        finally:
            try:
                logger.remove(sink_id)
            except ValueError:
                pass  # already removed by a global logger.remove()
    finally:
        stream.close()


def _run_number(path: Path) -> int | None:
    match = RUN_LOG_PATTERN.match(path.name)
    return int(match.group(1)) if match else None


def prune_run_logs(log_dir: Path, keep: int) -> list[Path]:
    """Remove run logs beyond the newest ``keep`` (by run number); returns the removed paths, oldest first.

    Files whose name is not a run-log name are never touched. Housekeeping must never fail a run, so a
    folder or file that cannot be read or removed (a read-only SD card) is logged and left alone.
    """
    if keep < 0:
        raise ValueError(f"keep must not be negative, got {keep}")
    numbered = []
    try:
        for entry in log_dir.iterdir():
            number = _run_number(entry)
            if number is not None and entry.is_file():
                numbered.append((number, entry))
    except FileNotFoundError:
        return []
    except OSError as exc:
        logger.warning("could not list run logs in {} to prune them: {}", log_dir, exc)
        return []
    numbered.sort(key=lambda item: item[0], reverse=True)
    removed = []
    for _, path in numbered[keep:]:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not remove old run log {}: {}", path, exc)
        else:
            removed.append(path)
    return removed[::-1]


def tail(path: Path, lines: int = 50) -> str:
    """The last ``lines`` lines of a log file (reading only the end of it); "" if it does not exist."""
    if lines <= 0:
        return ""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return ""
    with handle:
        size = handle.seek(0, os.SEEK_END)
        block = 8192
        data = b""
        position = size
        # A trailing newline ends the last line; it does not start an empty one.
        while position > 0 and data.count(b"\n") <= lines:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    text = data.decode("utf-8", errors="replace")
    return "".join(text.splitlines(keepends=True)[-lines:])
