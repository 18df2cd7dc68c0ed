"""Channels of the Notifier (email and the NOTIFY_URLS ones) and the pure helpers for notification URLs."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import tenacity

from shared.errors import NotifyError, SettingsError
from shared.logs import redact
from shared.notify import Email, Notifier, fit_body, notifier_from_settings
from shared.notify_urls import describe_url, url_secret_parts
from shared.settings import SharedSettings, load_settings
from shared.testing import RecordingMailer, capture_logs
from tests.support.polling import wait_for

NO_WAIT = tenacity.wait_none()
BOT_TOKEN = "123456789:AAHsecretBotToken0987"


class FakeChannel:
    """A chat channel that fails its first ``failures`` sends, or blocks until ``release`` is set."""

    retry_log_level = "DEBUG"

    def __init__(self, label: str, failures: int = 0, blocking: bool = False) -> None:
        self.label = label
        self.failures = failures
        self.attempts = 0
        self.sent: list[Email] = []
        self.release = threading.Event()
        if not blocking:
            self.release.set()

    def send(self, message: Email) -> None:
        self.attempts += 1
        self.release.wait(timeout=30)
        if self.attempts <= self.failures:
            raise NotifyError(f"HTTP 500 from {self.label}")
        self.sent.append(message)


def test_a_notification_goes_to_email_and_every_channel_with_its_kind():
    mailer, chat, push = RecordingMailer(), FakeChannel("chat"), FakeChannel("push")
    notifier = Notifier(mailer, channels=[chat, push], wait=NO_WAIT)
    notifier.notify(Email("deployed 1.2.3", "all good", kind="success"))
    assert notifier.flush(timeout=10)
    notifier.close()
    assert [e.subject for e in mailer.sent] == ["deployed 1.2.3"]
    assert chat.sent == push.sent == [Email("deployed 1.2.3", "all good", kind="success")]
    assert notifier.enabled


def test_channels_without_email_are_enough_to_be_enabled():
    chat = FakeChannel("chat")
    notifier = Notifier(None, channels=[chat], wait=NO_WAIT)
    assert notifier.enabled
    notifier.notify(Email("x", "y"))
    assert notifier.flush(timeout=10)
    notifier.close()
    assert len(chat.sent) == 1


def test_a_failing_channel_is_retried_on_its_own_and_logged_once():
    mailer, down = RecordingMailer(), FakeChannel("NOTIFY_URLS #1 (json://127.0.0.1)", failures=99)
    notifier = Notifier(mailer, channels=[down], attempts=3, wait=NO_WAIT)
    with capture_logs("INFO") as logs:
        notifier.notify(Email("run 7 failed", "tail", kind="failure"))
        assert notifier.flush(timeout=10)
    notifier.close()
    assert down.attempts == 3
    assert len(mailer.sent) == 1
    about_down = [e for e in logs if "json://127.0.0.1" in e.message]
    assert [e.level for e in about_down] == ["ERROR"]
    assert "'run 7 failed' not sent after 3 attempts: HTTP 500" in about_down[0].message


def test_a_channel_that_recovers_gets_the_message():
    flaky = FakeChannel("flaky", failures=2)
    notifier = Notifier(None, channels=[flaky], attempts=3, wait=NO_WAIT)
    notifier.notify(Email("deployed 2.0.0", "ok"))
    assert notifier.flush(timeout=10)
    notifier.close()
    assert (flaky.attempts, len(flaky.sent)) == (3, 1)


def test_a_stuck_channel_delays_no_other_channel():
    stuck, chat = FakeChannel("stuck", blocking=True), FakeChannel("chat")
    mailer = RecordingMailer()
    notifier = Notifier(mailer, channels=[stuck, chat], wait=NO_WAIT)
    notifier.notify(Email("first", ""))
    notifier.notify(Email("second", ""))

    def others_done() -> bool:
        return len(chat.sent) == 2 and len(mailer.sent) == 2

    wait_for(others_done, timeout=10, what="email and the chat channel to get both messages")
    assert stuck.sent == []
    assert notifier.flush(timeout=0.05) is False  # the stuck channel still holds its messages
    stuck.release.set()
    assert notifier.flush(timeout=10)
    notifier.close()
    assert [e.subject for e in stuck.sent] == ["first", "second"]


def test_secrets_are_masked_before_any_channel_sees_them():
    chat = FakeChannel("chat")
    notifier = Notifier(None, channels=[chat], wait=NO_WAIT, secrets=[BOT_TOKEN])
    notifier.notify(Email(f"push with {BOT_TOKEN}", f"curl https://api.telegram.org/bot{BOT_TOKEN}/x"))
    assert notifier.flush(timeout=10)
    notifier.close()
    assert BOT_TOKEN not in chat.sent[0].subject + chat.sent[0].body


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ntfys://ntfy.sh/my-topic", "ntfys://ntfy.sh"),
        ("ntfys://user:pass@ntfy.example.org/topic", "ntfys://ntfy.example.org"),
        (f"tgram://{BOT_TOKEN}/987654321", "tgram://…"),
        ("ntfy://secret-topic", "ntfy://…"),
        ("discord://1234567890/webhookTokenValue", "discord://…"),
        ("json://127.0.0.1:8080/hook", "json://127.0.0.1"),
        ("JSON://localhost/x", "json://localhost"),
        ("gotify://[::1/tok", "gotify://…"),
        ("not a url", "(not a URL: no scheme://)"),
    ],
)
def test_describe_url_shows_scheme_and_host_name_only(url, shown):
    assert describe_url(url) == shown


def test_url_secret_parts_lists_tokens_not_short_words():
    parts = url_secret_parts(f"tgram://{BOT_TOKEN}/987654321?format=text&token=AbCdEfGh12345")
    assert "987654321" in parts and "AbCdEfGh12345" in parts
    assert BOT_TOKEN in parts and "AAHsecretBotToken0987" in parts
    assert "text" not in parts and "format" not in parts
    assert "longpassword" in url_secret_parts("ntfys://bob:longpassword@ntfy.sh/topic")
    assert "ntfy.sh" not in url_secret_parts("ntfys://bob:longpassword@ntfy.sh/topic")


def test_settings_mask_every_token_of_notify_urls():
    settings = load_settings(
        SharedSettings, {"NOTIFY_URLS": f"tgram://{BOT_TOKEN}/987654321, ntfys://ntfy.sh/private-topic-42"}
    )
    values = settings.secret_values()
    text = f"error talking to api.telegram.org/bot{BOT_TOKEN}/sendMessage chat 987654321 topic private-topic-42"
    masked = redact(text, values)
    assert "AAHsecretBotToken0987" not in masked
    assert "987654321" not in masked and "private-topic-42" not in masked
    assert "AAH" not in repr(settings)


def test_fit_body_keeps_the_start_and_the_log_tail():
    head = "CI run #4 failed at step test.\n\nLast lines of the log:\n"
    lines = [f"log line {n:04d}" for n in range(2000)]
    body = head + "\n".join(lines)
    fitted = fit_body(body, 4096)
    assert len(fitted) <= 4096
    assert fitted.startswith("CI run #4 failed at step test.")
    assert fitted.endswith("log line 1999")
    assert "characters cut" in fitted
    assert fit_body("short", 4096) == "short"
    assert fit_body(body, 100) == body[:100]


def test_fit_body_counts_what_it_cut():
    body = "\n".join(f"line {n:03d}" for n in range(500))
    fitted = fit_body(body, 1000)
    cut = int(fitted.split("[… ")[1].split(" characters")[0])
    kept = fitted.replace(f"\n[… {cut} characters cut …]\n", "")
    assert len(kept) + cut == len(body)


def test_notify_urls_without_apprise_installed_is_a_clear_start_up_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "apprise", None)  # what `import apprise` sees when it is not installed
    monkeypatch.delitem(sys.modules, "shared.apprise_channel", raising=False)
    settings = load_settings(SharedSettings, {"NOTIFY_URLS": f"tgram://{BOT_TOKEN}/987654321"})
    with pytest.raises(SettingsError) as caught:
        notifier_from_settings(settings)
    message = str(caught.value)
    assert "NOTIFY_URLS is set but Apprise is not installed" in message
    assert "pip install 'pi-cicd[apprise]'" in message
    assert BOT_TOKEN not in message


def test_without_notify_urls_apprise_is_not_imported():
    code = (
        "import sys; from shared.notify import notifier_from_settings; from shared.settings import SharedSettings;"
        "notifier_from_settings(SharedSettings()); print('apprise' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
