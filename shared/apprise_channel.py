"""Chat and push channels through Apprise (Telegram, ntfy, Gotify, Discord, ...).

Imported only when ``NOTIFY_URLS`` is set: Apprise and its dependencies cost idle memory (see the
README), and an agent that sends only email should not pay it. Apprise reports a failed delivery
through the standard ``logging`` module, not as an exception; :class:`AppriseChannel` collects those
records for the failing thread and raises them as one ``NotifyError`` with the URL's secret parts
masked, and nothing Apprise logs reaches the console on its own (its messages can name a URL).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import apprise
from apprise.utils.parse import parse_urls

from shared.errors import NotifyError, SettingsError
from shared.logs import redact
from shared.notify import Email, fit_body
from shared.notify_urls import describe_url, url_secret_parts

_KINDS = {
    "info": apprise.NotifyType.INFO,
    "success": apprise.NotifyType.SUCCESS,
    "warning": apprise.NotifyType.WARNING,
    "failure": apprise.NotifyType.FAILURE,
}


class _Collector(logging.Handler):
    """Keeps Apprise's warnings per thread while a send runs; drops them otherwise."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        records: list[str] | None = getattr(self._local, "records", None)
        if records is not None:
            records.append(record.getMessage())

    @contextmanager
    def collecting(self) -> Iterator[list[str]]:
        records: list[str] = []
        self._local.records = records
        try:
            yield records
        finally:
            self._local.records = None


_collector = _Collector()
_apprise_logger = logging.getLogger("apprise")
_apprise_logger.addHandler(_collector)
# Without this, Python's last-resort handler would print Apprise's warnings (URLs included) to stderr.
_apprise_logger.propagate = False


def split_urls(value: str) -> list[str]:
    """``NOTIFY_URLS`` split the way Apprise splits it: at a space, comma or semicolon before ``scheme://``."""
    return [str(url) for url in parse_urls(value)]  # type: ignore[no-untyped-call]


class AppriseChannel:
    """One Apprise URL; ``label`` is its position and scheme (plus the host when it is a host name)."""

    retry_log_level = "DEBUG"

    def __init__(self, url: str, index: int) -> None:
        self.label = f"NOTIFY_URLS #{index} ({describe_url(url)})"
        self._secrets = url_secret_parts(url, minimum=1)
        with _collector.collecting():
            plugin = apprise.Apprise.instantiate(url)
        if plugin is None:
            raise SettingsError(
                f"{self.label} is not a URL Apprise understands (unknown scheme, or a field the service needs "
                "is missing or malformed); see https://github.com/caronc/apprise/wiki for the service's URL form"
            )
        self._plugin = plugin

    def __repr__(self) -> str:
        return f"AppriseChannel({self.label})"

    def send(self, message: Email) -> None:
        plugin = self._plugin
        title = message.subject
        if plugin.title_maxlen > 0:
            title = title[: plugin.title_maxlen]
        room = plugin.body_maxlen - (len(title) + 2 if plugin.title_maxlen <= 0 else 0)
        with _collector.collecting() as said:
            sent = plugin.notify(
                body=fit_body(message.body, room), title=title, notify_type=_KINDS[message.kind],
                body_format=apprise.NotifyFormat.TEXT,
            )
        if not sent:
            reason = "; ".join(dict.fromkeys(said)) or "the service refused it"
            raise NotifyError(redact(reason, self._secrets))
