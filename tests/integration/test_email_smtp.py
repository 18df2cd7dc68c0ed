"""SmtpMailer and Notifier against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import ssl
import time
from typing import Any

import pytest
import tenacity
from pydantic import SecretStr

from shared.errors import NotifyError
from shared.notify import Email, Notifier, SmtpMailer, notifier_from_settings
from shared.settings import SharedSettings, load_settings
from shared.testing import capture_logs
from tests.support.polling import wait_for
from tests.support.smtp_server import SmtpServer

PASSWORD = "correct-horse-battery"


def mailer_for(server: SmtpServer, **overrides) -> SmtpMailer:
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "security": "none",
        "username": None,
        "password": None,
        "sender": "ci@pi.example",
        "recipients": ["ops@example.org", "dev@example.org"],
        "timeout": 5.0,
    }
    options.update(overrides)
    return SmtpMailer(**options)


def test_plain_send_reaches_every_recipient_with_proper_headers(smtp_server):
    mailer_for(smtp_server).send(Email("run 7 failed: test", "line 1\nline 2\n"))

    [message] = smtp_server.wait_for_messages(1)
    [mail] = smtp_server.received
    assert mail.recipients == ["ops@example.org", "dev@example.org"]
    assert mail.mail_from == "ci@pi.example"
    assert message["From"] == "ci@pi.example"
    assert message["To"] == "ops@example.org, dev@example.org"
    assert message["Subject"] == "run 7 failed: test"
    assert message["Date"]
    assert message["Message-ID"].endswith("@pi.example>")
    assert message.get_content() == "line 1\nline 2\n"


def test_send_with_login(start_smtp_server):
    server = start_smtp_server(auth=("ci-bot", PASSWORD))
    mailer_for(server, username="ci-bot", password=SecretStr(PASSWORD)).send(Email("hello", "body"))

    server.wait_for_messages(1)
    assert server.received[0].authenticated_as == "ci-bot"


def test_server_requiring_login_refuses_an_anonymous_sender(start_smtp_server):
    server = start_smtp_server(auth=("ci-bot", PASSWORD))
    with pytest.raises(NotifyError, match=f"127.0.0.1:{server.port}.*530"):
        mailer_for(server).send(Email("hello", "body"))
    assert server.messages == []


def test_wrong_password_raises_notify_error_naming_server_not_password(start_smtp_server):
    server = start_smtp_server(auth=("ci-bot", PASSWORD))
    wrong = "wrong-password-123"
    with pytest.raises(NotifyError) as caught:
        mailer_for(server, username="ci-bot", password=SecretStr(wrong)).send(Email("hello", "body"))
    text = str(caught.value)
    assert f"127.0.0.1:{server.port}" in text
    assert "535" in text and "ci-bot" in text
    assert wrong not in text
    assert server.messages == []


def test_wrong_password_through_notifier_is_only_logged(start_smtp_server):
    server = start_smtp_server(auth=("ci-bot", PASSWORD))
    mailer = mailer_for(server, username="ci-bot", password=SecretStr("nope-not-it"))
    notifier = Notifier(mailer, attempts=2, wait=tenacity.wait_none())
    with capture_logs() as logs:
        notifier.notify(Email("deployed 1.2.3", "ok"))
        assert notifier.flush(timeout=20)
    notifier.close()

    errors = [entry.message for entry in logs if entry.level == "ERROR"]
    assert len(errors) == 1
    assert "not sent after 2 attempts" in errors[0]
    assert f"127.0.0.1:{server.port}" in errors[0] and "535" in errors[0]
    assert "nope-not-it" not in errors[0]
    assert server.messages == []


def test_server_down_notify_returns_at_once_and_failure_is_logged_after_retries(start_smtp_server):
    server = start_smtp_server()
    server.stop()
    notifier = Notifier(mailer_for(server), attempts=3, wait=tenacity.wait_fixed(0.2))
    with capture_logs() as logs:
        started = time.monotonic()
        notifier.notify(Email("run 3 failed", "tail"))
        returned_after = time.monotonic() - started
        assert notifier.flush(timeout=20)
        drained_after = time.monotonic() - started
    notifier.close()

    assert returned_after < 0.2  # the two 0.2 s retry waits happened on the worker thread
    assert drained_after >= 0.4
    retries = [entry for entry in logs if entry.level == "WARNING"]
    errors = [entry for entry in logs if entry.level == "ERROR"]
    assert len(retries) == 2
    assert len(errors) == 1
    assert "not sent after 3 attempts" in errors[0].message
    assert f"127.0.0.1:{server.port}" in errors[0].message


def test_secret_in_a_body_is_redacted_in_the_received_mail(smtp_server):
    secret = "ghp_registryTokenValue42"
    settings = load_settings(
        SharedSettings,
        {
            "SMTP_HOST": smtp_server.host,
            "SMTP_PORT": str(smtp_server.port),
            "SMTP_SECURITY": "none",
            "NOTIFY_FROM": "cd@pi.example",
            "NOTIFY_TO": "ops@example.org, dev@example.org",
            "REGISTRY_PASSWORD": secret,
        },
    )
    notifier = notifier_from_settings(settings)
    notifier.notify(Email(f"push with {secret} failed", f"docker login -p {secret}\nunauthorized\n"))
    assert notifier.flush(timeout=20)
    notifier.close()

    [message] = smtp_server.wait_for_messages(1)
    assert smtp_server.received[0].recipients == ["ops@example.org", "dev@example.org"]
    raw = message.as_string()
    assert secret not in raw
    assert message["Subject"] == "push with *** failed"
    assert message.get_content() == "docker login -p ***\nunauthorized\n"


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_modes_deliver_with_a_trusted_certificate(start_smtp_server, security):
    server = start_smtp_server(tls=security, auth=("ci-bot", PASSWORD))
    mailer = mailer_for(
        server, security=security, username="ci-bot", password=SecretStr(PASSWORD),
        ssl_context=server.client_ssl_context(),
    )
    mailer.send(Email(f"over {security}", "encrypted"))

    [message] = server.wait_for_messages(1)
    assert message["Subject"] == f"over {security}"
    assert server.received[0].authenticated_as == "ci-bot"


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_modes_refuse_an_untrusted_certificate(start_smtp_server, security):
    server = start_smtp_server(tls=security)
    mailer = mailer_for(server, security=security, ssl_context=ssl.create_default_context())
    with pytest.raises(NotifyError, match=f"127.0.0.1:{server.port}.*(?i:certificate)"):
        mailer.send(Email("x", "y"))
    assert server.messages == []


def test_starttls_against_a_server_without_it_fails(smtp_server):
    mailer = mailer_for(smtp_server, security="starttls")
    with pytest.raises(NotifyError, match=f"127.0.0.1:{smtp_server.port}.*STARTTLS"):
        mailer.send(Email("x", "y"))


def test_server_restarted_after_a_failure_gets_the_retried_email(start_smtp_server):
    """A retry succeeds once the server is back, so a short outage loses no email."""
    server = start_smtp_server()
    server.stop()
    notifier = Notifier(mailer_for(server), attempts=30, wait=tenacity.wait_fixed(0.1))
    with capture_logs() as logs:
        notifier.notify(Email("eventually", "delivered"))
        wait_for(lambda: any(e.level == "WARNING" for e in logs), timeout=10, what="a failed attempt")
        server.start()
        assert notifier.flush(timeout=20)
    notifier.close()
    assert [m["Subject"] for m in server.wait_for_messages(1)] == ["eventually"]
