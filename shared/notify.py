"""Notifications: a ``Mailer`` that talks SMTP, and a ``Notifier`` that never blocks a run.

``Notifier.notify`` queues the message for every channel (email, and the Apprise URLs of
``NOTIFY_URLS``) and returns at once; each channel has its own daemon thread that sends with
tenacity retries (exponential back-off with jitter), so a channel that is down delays no other. A
final failure is logged once, never raised: a broken mail server or chat service must not fail a
build or a deploy. Configured secret values are masked in the subject and body before anything
leaves the process.
"""

from __future__ import annotations

import queue
import smtplib
import ssl
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal, Protocol

import tenacity
from loguru import logger
from pydantic import SecretStr
from tenacity.wait import WaitBaseT

from shared.errors import NotifyError, SettingsError
from shared.logs import redact
from shared.settings import SharedSettings, SmtpSecurity

Kind = Literal["info", "success", "warning", "failure"]


@dataclass(frozen=True)
class Email:
    """One notification: ``subject`` is the title on chat channels; ``kind`` picks their icon or colour."""

    subject: str
    body: str
    kind: Kind = "info"


class Mailer(Protocol):
    def send(self, email: Email) -> None:
        """Deliver ``email`` or raise ``NotifyError``."""


class Channel(Protocol):
    """Somewhere a notification goes. ``label`` names it in logs and must hold no secret."""

    label: str
    # Email logs every failed attempt as a warning (as it always has); chat channels say it once, at the end.
    retry_log_level: str

    def send(self, message: Email) -> None:
        """Deliver ``message`` or raise ``NotifyError``."""


class MailerChannel:
    """Email as a channel: the configured ``Mailer``, labelled ``email``."""

    label = "email"
    retry_log_level = "WARNING"

    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer

    def __repr__(self) -> str:
        return repr(self.mailer)

    def send(self, message: Email) -> None:
        self.mailer.send(message)


class SmtpMailer:
    """Sends each email over a fresh SMTP connection (``none``, ``starttls`` or implicit ``ssl``)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        security: SmtpSecurity,
        username: str | None,
        password: SecretStr | None,
        sender: str,
        recipients: Sequence[str],
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not recipients:
            raise ValueError("an SmtpMailer needs at least one recipient")
        if security not in ("none", "starttls", "ssl"):
            raise ValueError(f"SMTP security must be 'none', 'starttls' or 'ssl', got {security!r}")
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self._password = password
        self.sender = sender
        self.recipients = tuple(recipients)
        self.timeout = timeout
        # None means the system's trusted CAs with hostname checking; tests pass one trusting their own cert.
        self._ssl_context = ssl_context

    def __repr__(self) -> str:
        return (
            f"SmtpMailer(host={self.host!r}, port={self.port}, security={self.security!r}, "
            f"username={self.username!r})"
        )

    def build_message(self, email: Email) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        # A line break in a header would be header injection; the subject is one line.
        message["Subject"] = " ".join(email.subject.split())
        message["Date"] = formatdate(usegmt=True)
        # make_msgid() without a domain asks DNS for our FQDN, which can hang on a Pi without DNS.
        message["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or "pi-cicd.local")
        message.set_content(email.body)
        return message

    def send(self, email: Email) -> None:
        where = f"{self.host}:{self.port}"
        try:
            message = self.build_message(email)
        except (ValueError, TypeError) as exc:
            raise NotifyError(f"cannot build the email for {where}: {exc}") from exc
        try:
            with self._session() as smtp:
                refused = smtp.send_message(message, from_addr=self.sender, to_addrs=list(self.recipients))
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifyError(f"sending email via {where} failed: {self._reason(exc)}") from exc
        if refused:
            logger.warning("mail server {} refused some recipients: {}", where, ", ".join(sorted(refused)))

    def check_login(self) -> None:
        """Connect, secure and log in as a send does, then leave without sending (``doctor``); ``NotifyError``
        says what failed."""
        try:
            with self._session() as smtp:
                smtp.noop()
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifyError(f"cannot log in to {self.host}:{self.port}: {self._reason(exc)}") from exc

    @contextmanager
    def _session(self) -> Iterator[smtplib.SMTP]:
        with self._connect() as smtp:
            if self.security == "starttls":
                smtp.starttls(context=self._context())
            if self.username:
                password = self._password.get_secret_value() if self._password else ""
                smtp.login(self.username, password)
            yield smtp

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        if self.security == "ssl":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self._context())
        return smtplib.SMTP(self.host, self.port, timeout=self.timeout)

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            reason = f"login as {self.username!r} refused ({_response(exc)})"
        elif isinstance(exc, smtplib.SMTPRecipientsRefused):
            reason = "all recipients refused: " + ", ".join(sorted(exc.recipients))
        elif isinstance(exc, smtplib.SMTPResponseException):
            reason = _response(exc)
        elif isinstance(exc, smtplib.SMTPNotSupportedError):
            reason = f"server does not support it ({exc})"
        else:
            reason = str(exc) or type(exc).__name__
        secret = self._password.get_secret_value() if self._password else ""
        return redact(reason, [secret])


def _response(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    return f"{exc.smtp_code} {text}"


# 1 s, 2 s, 4 s ... plus up to 1 s of jitter. Defaults only: tenacity 9 renamed `initial` and warns on it.
DEFAULT_WAIT: WaitBaseT = tenacity.wait_exponential_jitter(max=60)


class Notifier:
    """Queues notifications and sends them on one background thread per channel.

    ``mailer=None`` means email is off; ``channels`` are the other channels (Apprise URLs). With
    neither, ``notify`` is a no-op.
    """

    def __init__(
        self,
        mailer: Mailer | None,
        *,
        channels: Sequence[Channel] = (),
        attempts: int = 3,
        wait: WaitBaseT = DEFAULT_WAIT,
        secrets: Iterable[str] = (),
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.mailer = mailer
        self.attempts = attempts
        self._wait = wait
        self._secrets = tuple(s for s in secrets if s)
        email: list[Channel] = [MailerChannel(mailer)] if mailer is not None else []
        self.channels: tuple[Channel, ...] = (*email, *channels)
        self._lanes = [_Lane(self, channel) for channel in self.channels]
        self._pending = 0
        self._idle = threading.Condition()
        self._closed = False

    @property
    def enabled(self) -> bool:
        return bool(self.channels)

    def notify(self, email: Email) -> None:
        """Queue ``email`` for every channel and return at once; delivery failures are logged, never raised."""
        if not self._lanes:
            logger.debug("notifications are off; not sending {!r}", email.subject)
            return
        safe = Email(
            subject=redact(email.subject, self._secrets), body=redact(email.body, self._secrets), kind=email.kind
        )
        with self._idle:
            if self._closed:
                logger.warning("notifier is closed; not sending {!r}", safe.subject)
                return
            self._pending += len(self._lanes)
        for lane in self._lanes:
            lane.put(safe)

    def flush(self, timeout: float = 30) -> bool:
        """Wait until every queued notification was sent or given up; False if ``timeout`` ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self, timeout: float = 30) -> bool:
        """Flush, then stop the worker threads; later ``notify`` calls are dropped with a warning."""
        drained = self.flush(timeout)
        with self._idle:
            self._closed = True
        for lane in self._lanes:
            lane.stop(timeout)
        return drained

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _deliver(self, channel: Channel, email: Email) -> None:
        label = channel.label
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(NotifyError),
            reraise=True,
            before_sleep=lambda state: logger.log(
                channel.retry_log_level,
                "{} {!r} not sent (attempt {} of {}): {}",
                label,
                email.subject,
                state.attempt_number,
                self.attempts,
                state.outcome.exception() if state.outcome else "?",
            ),
        )
        try:
            retrying(channel.send, email)
        except NotifyError as exc:
            logger.error("{} {!r} not sent after {} attempts: {}", label, email.subject, self.attempts, exc)
        except Exception:
            logger.exception("{} {!r} not sent: unexpected error in {!r}", label, email.subject, channel)
        else:
            logger.info("{} {!r} sent", label, email.subject)


class _Lane:
    """One channel's queue and worker thread, so a slow or failing channel holds up no other."""

    def __init__(self, notifier: Notifier, channel: Channel) -> None:
        self._notifier = notifier
        self._channel = channel
        self._queue: queue.Queue[Email | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, email: Email) -> None:
        with self._lock:
            # Started on first use, so building a Notifier (e.g. in settings tests) costs no thread.
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"notifier-{self._channel.label}", daemon=True)
                self._thread.start()
        self._queue.put(email)

    def stop(self, timeout: float) -> None:
        with self._lock:
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            email = self._queue.get()
            if email is None:
                return
            try:
                self._notifier._deliver(self._channel, email)
            finally:
                self._notifier._done()


def notifier_from_settings(settings: SharedSettings) -> Notifier:
    """A ``Notifier`` over SMTP and the ``NOTIFY_URLS`` channels as configured; a no-op one when neither is set.

    Raises ``SettingsError`` for an incomplete email setup, an Apprise URL Apprise does not understand
    (named by position, scheme and host, never in full), or ``NOTIFY_URLS`` without Apprise installed.
    """
    channels = apprise_channels(settings)
    mailer = smtp_mailer(settings)
    return Notifier(mailer, channels=channels, secrets=settings.secret_values())


def apprise_channels(settings: SharedSettings) -> list[Channel]:
    """One channel per URL in ``NOTIFY_URLS``; Apprise is imported only here, and only when it is set."""
    if settings.notify_urls is None:
        return []
    try:
        from shared.apprise_channel import AppriseChannel, split_urls
    except ImportError as exc:
        raise SettingsError(
            f"NOTIFY_URLS is set but Apprise is not installed ({exc}); install it with "
            "pip install 'pi-cicd[apprise]', or unset NOTIFY_URLS"
        ) from None
    urls = split_urls(settings.notify_urls.get_secret_value())
    channels: list[Channel] = []
    problems = []
    for index, url in enumerate(urls, start=1):
        try:
            channels.append(AppriseChannel(url, index))
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError("invalid settings: " + "; ".join(problems))
    logger.info("notifications on: {}", ", ".join(channel.label for channel in channels))
    return channels


def smtp_mailer(settings: SharedSettings) -> SmtpMailer | None:
    """The ``SmtpMailer`` as configured, or None (logged once) when ``SMTP_HOST`` is unset."""
    if settings.smtp_host is None:
        logger.info("email is off: SMTP_HOST is not set")
        return None
    sender = settings.notify_from
    if sender is None and settings.smtp_username and "@" in settings.smtp_username:
        sender = settings.smtp_username  # most providers only accept mail from the account's own address
    problems = []
    if sender is None:
        problems.append("NOTIFY_FROM is required when SMTP_HOST is set (SMTP_USERNAME is not an address)")
    if not settings.notify_to:
        problems.append("NOTIFY_TO is required when SMTP_HOST is set")
    if problems or sender is None:
        raise SettingsError("invalid settings: " + "; ".join(problems))
    mailer = SmtpMailer(
        host=settings.smtp_host,
        port=settings.smtp_port,
        security=settings.smtp_security,
        username=settings.smtp_username,
        password=settings.smtp_password,
        sender=sender,
        recipients=settings.notify_to,
        timeout=settings.smtp_timeout,
    )
    logger.info(
        "email on: via {}:{} ({}) to {}",
        settings.smtp_host, settings.smtp_port, settings.smtp_security, ", ".join(settings.notify_to),
    )
    if settings.smtp_login_in_clear:
        # Said once per start, never with the password: an operator may have meant starttls.
        logger.warning(
            "SMTP_SECURITY=none: the login of {!r} to {}:{}, password included, crosses the network "
            "unencrypted; use SMTP_SECURITY=starttls (port 587) or ssl (port 465)",
            settings.smtp_username, settings.smtp_host, settings.smtp_port,
        )
    return mailer


def fit_body(body: str, limit: int) -> str:
    """``body`` cut to ``limit`` characters, keeping its start (what happened) and its end (the log tail)."""
    if len(body) <= limit:
        return body
    marker = "\n[… {} characters cut …]\n"
    if limit < 200:
        return body[: max(limit, 0)]
    head = body[: limit // 3].rpartition("\n")[0] or body[: limit // 3]
    cut_marker = marker.format(len(body))  # an upper bound of the digits the real count needs
    room = limit - len(head) - len(cut_marker)
    end = body[-room:]
    if "\n" in end:
        end = end.partition("\n")[2]
    return head + marker.format(len(body) - len(head) - len(end)) + end
