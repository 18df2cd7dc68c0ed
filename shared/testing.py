"""Test helpers shipped with the shared library, so both agents' tests use the same fakes.

``RecordingMailer`` stands in for ``SmtpMailer``; ``capture_logs()`` collects loguru records the way
structlog's ``capture_logs`` does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from shared.errors import NotifyError
from shared.notify import Email

if TYPE_CHECKING:
    import loguru


class RecordingMailer:
    """A ``Mailer`` that keeps what it is asked to send; the first ``fail_times`` sends raise ``NotifyError``."""

    def __init__(self, *, fail_times: int = 0, reason: str = "simulated SMTP failure") -> None:
        self.sent: list[Email] = []
        self.attempts = 0
        self.fail_times = fail_times
        self.reason = reason
        self._lock = threading.Lock()

    @property
    def emails(self) -> list[Email]:
        """Same list as ``sent``."""
        return self.sent

    def send(self, email: Email) -> None:
        with self._lock:
            self.attempts += 1
            if self.fail_times > 0:
                self.fail_times -= 1
                raise NotifyError(self.reason)
            self.sent.append(email)


@dataclass(frozen=True)
class LogEntry:
    """One captured record: the formatted message, the level name, and a copy of ``extra``."""

    message: str
    level: str
    extra: dict[str, Any] = field(default_factory=dict)
    exception: BaseException | None = None

    def __getitem__(self, key: str) -> Any:
        # structlog-style access: entry["message"], entry["level"], or any bound extra key.
        if key in ("message", "level", "exception"):
            return getattr(self, key)
        return self.extra[key]


@contextmanager
def capture_logs(level: str | int = "TRACE") -> Iterator[list[LogEntry]]:
    """Collect every loguru record at ``level`` or above, from any thread, while the block runs.

    The yielded list fills as records arrive, so a test can ``wait_for`` on it.
    """
    entries: list[LogEntry] = []

    def sink(message: loguru.Message) -> None:
        record = message.record
        error = record["exception"].value if record["exception"] else None
        entries.append(LogEntry(record["message"], record["level"].name, dict(record["extra"]), error))

    sink_id = logger.add(sink, level=level, format="{message}")
    try:
        yield entries
    finally:
        try:
            logger.remove(sink_id)
        except ValueError:
            pass
