"""Notifier, SmtpMailer message building and notifier_from_settings, with the shared fakes."""

from __future__ import annotations

import threading

import pytest
import tenacity
from pydantic import SecretStr

from shared.errors import NotifyError, SettingsError
from shared.notify import Email, Notifier, SmtpMailer, notifier_from_settings
from shared.settings import SharedSettings, load_settings
from shared.testing import RecordingMailer, capture_logs

NO_WAIT = tenacity.wait_none()


class BlockingMailer:
    """Holds every send until ``release`` is set, so a test can observe the queue while it waits."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.sent: list[Email] = []

    def send(self, email: Email) -> None:
        self.started.set()
        self.release.wait(timeout=30)
        self.sent.append(email)


class BuggyMailer:
    def send(self, email: Email) -> None:
        raise TypeError("a bug, not an SMTP failure")


def test_notify_sends_on_the_worker_thread():
    mailer = RecordingMailer()
    notifier = Notifier(mailer, wait=NO_WAIT)
    notifier.notify(Email("deployed 1.2.3", "all good"))
    assert notifier.flush(timeout=10)
    notifier.close()
    assert mailer.sent == [Email("deployed 1.2.3", "all good")]


def test_notify_returns_while_the_mailer_is_still_busy():
    mailer = BlockingMailer()
    notifier = Notifier(mailer, wait=NO_WAIT)
    notifier.notify(Email("first", ""))
    notifier.notify(Email("second", ""))
    assert mailer.started.wait(timeout=10)
    assert notifier.flush(timeout=0.05) is False  # still sending: flush gives up without raising
    mailer.release.set()
    assert notifier.flush(timeout=10)
    notifier.close()
    assert [e.subject for e in mailer.sent] == ["first", "second"]  # one worker, in order


def test_transient_failures_are_retried_and_logged_as_warnings():
    mailer = RecordingMailer(fail_times=2)
    notifier = Notifier(mailer, attempts=3, wait=NO_WAIT)
    with capture_logs() as logs:
        notifier.notify(Email("run 4 failed", "tail"))
        assert notifier.flush(timeout=10)
    notifier.close()
    assert mailer.attempts == 3
    assert [e.subject for e in mailer.sent] == ["run 4 failed"]
    assert [e.level for e in logs if e.level in ("WARNING", "ERROR")] == ["WARNING", "WARNING"]


def test_final_failure_is_logged_with_the_reason_and_never_raised():
    mailer = RecordingMailer(fail_times=5, reason="connection refused by 127.0.0.1:25")
    notifier = Notifier(mailer, attempts=2, wait=NO_WAIT)
    with capture_logs() as logs:
        notifier.notify(Email("run 5 failed", "tail"))
        assert notifier.flush(timeout=10)
    assert mailer.attempts == 2
    assert mailer.sent == []
    [error] = [e for e in logs if e.level == "ERROR"]
    assert "'run 5 failed' not sent after 2 attempts: connection refused by 127.0.0.1:25" in error.message

    # the worker survives a failure: the next email still goes out
    mailer.fail_times = 0
    notifier.notify(Email("next", ""))
    assert notifier.flush(timeout=10)
    notifier.close()
    assert [e.subject for e in mailer.sent] == ["next"]


def test_unexpected_mailer_error_is_logged_not_retried_and_worker_survives():
    notifier = Notifier(BuggyMailer(), attempts=3, wait=NO_WAIT)
    with capture_logs() as logs:
        notifier.notify(Email("a", ""))
        notifier.notify(Email("b", ""))
        assert notifier.flush(timeout=10)
    notifier.close()
    errors = [e for e in logs if e.level == "ERROR"]
    assert len(errors) == 2
    assert all(isinstance(e.exception, TypeError) for e in errors)


def test_secrets_are_redacted_from_subject_and_body_before_sending():
    mailer = RecordingMailer()
    notifier = Notifier(mailer, wait=NO_WAIT, secrets=["tok-123", ""])
    notifier.notify(Email("push with tok-123 failed", "curl -u bot:tok-123 https://x\n"))
    assert notifier.flush(timeout=10)
    notifier.close()
    assert mailer.sent == [Email("push with *** failed", "curl -u bot:*** https://x\n")]


def test_without_a_mailer_notify_is_a_no_op():
    notifier = Notifier(None)
    notifier.notify(Email("x", "y"))
    assert notifier.enabled is False
    assert notifier.flush(timeout=0) is True
    assert notifier.close(timeout=0) is True


def test_notify_after_close_is_dropped_with_a_warning():
    mailer = RecordingMailer()
    notifier = Notifier(mailer, wait=NO_WAIT)
    notifier.notify(Email("before", ""))
    assert notifier.close(timeout=10)
    with capture_logs() as logs:
        notifier.notify(Email("after", ""))
    assert [e.subject for e in mailer.sent] == ["before"]
    assert any("closed" in e.message for e in logs if e.level == "WARNING")


def test_attempts_must_be_positive():
    with pytest.raises(ValueError, match="attempts"):
        Notifier(RecordingMailer(), attempts=0)


def _mailer(**overrides) -> SmtpMailer:
    options = {
        "host": "mail.example.org",
        "port": 587,
        "security": "starttls",
        "username": "bot",
        "password": SecretStr("pw-xyz"),
        "sender": "ci@pi.example",
        "recipients": ["a@example.org", "b@example.org"],
    }
    options.update(overrides)
    return SmtpMailer(**options)  # type: ignore[arg-type]


def test_message_has_the_standard_headers():
    message = _mailer().build_message(Email("run 1 failed", "body text\n"))
    assert message["From"] == "ci@pi.example"
    assert message["To"] == "a@example.org, b@example.org"
    assert message["Subject"] == "run 1 failed"
    assert message["Date"].endswith("+0000")  # UTC, whatever the Pi's time zone
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith("@pi.example>")
    assert message.get_content() == "body text\n"


def test_subject_line_breaks_cannot_inject_headers():
    message = _mailer().build_message(Email("oops\r\nBcc: evil@example.org", "x"))
    assert message["Subject"] == "oops Bcc: evil@example.org"
    assert message["Bcc"] is None


def test_mailer_repr_never_shows_the_password():
    assert "pw-xyz" not in repr(_mailer())
    assert "mail.example.org" in repr(_mailer())


def test_mailer_needs_a_recipient():
    with pytest.raises(ValueError, match="recipient"):
        _mailer(recipients=[])


def test_mailer_refuses_an_unknown_security_mode():
    with pytest.raises(ValueError, match="starttls"):
        _mailer(security="tls")


def test_connection_failure_becomes_notify_error_naming_host_and_port():
    from tests.support.ports import free_port

    port = free_port()  # nothing listens here
    mailer = _mailer(host="127.0.0.1", port=port, security="none", password=SecretStr("pw-xyz"), timeout=2)
    with pytest.raises(NotifyError, match=f"127.0.0.1:{port}") as caught:
        mailer.send(Email("x", "y"))
    assert "pw-xyz" not in str(caught.value)


def _settings(**env: str) -> SharedSettings:
    return load_settings(SharedSettings, env)


def test_email_off_without_smtp_host_is_logged_once_at_info():
    with capture_logs() as logs:
        notifier = notifier_from_settings(_settings())
    assert notifier.enabled is False
    assert [(e.level, e.message) for e in logs] == [("INFO", "email is off: SMTP_HOST is not set")]


def test_settings_build_an_smtp_mailer():
    notifier = notifier_from_settings(
        _settings(
            SMTP_HOST="smtp.example.org", SMTP_PORT="465", SMTP_SECURITY="ssl", SMTP_USERNAME="bot@example.org",
            SMTP_PASSWORD="pw", NOTIFY_TO="a@example.org,b@example.org", SMTP_TIMEOUT="3",
        )
    )
    mailer = notifier.mailer
    assert isinstance(mailer, SmtpMailer)
    assert (mailer.host, mailer.port, mailer.security, mailer.timeout) == ("smtp.example.org", 465, "ssl", 3.0)
    assert mailer.sender == "bot@example.org"  # NOTIFY_FROM unset: the login address sends
    assert mailer.recipients == ("a@example.org", "b@example.org")


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"SMTP_HOST": "smtp.example.org", "NOTIFY_FROM": "ci@pi.example"}, "NOTIFY_TO"),
        ({"SMTP_HOST": "smtp.example.org", "NOTIFY_TO": "a@example.org", "SMTP_USERNAME": "bot"}, "NOTIFY_FROM"),
    ],
)
def test_settings_with_email_on_but_no_addresses_are_refused(env, missing):
    with pytest.raises(SettingsError, match=missing):
        notifier_from_settings(_settings(**env))


def test_recording_mailer_fails_the_first_times_then_records():
    mailer = RecordingMailer(fail_times=1, reason="boom")
    with pytest.raises(NotifyError, match="boom"):
        mailer.send(Email("a", ""))
    mailer.send(Email("b", ""))
    assert mailer.attempts == 2
    assert mailer.sent == mailer.emails == [Email("b", "")]
