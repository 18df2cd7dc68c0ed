"""Apprise channels against a real local HTTP server: what arrives for json://, form://, ntfy:// and gotify://.

The payload shapes are Apprise's own (its custom JSON/form plugins, and the ntfy and Gotify HTTP APIs
as Apprise speaks them); the server records the requests as they came over the wire.
"""

from __future__ import annotations

import pytest

from shared.apprise_channel import AppriseChannel, split_urls
from shared.errors import NotifyError, SettingsError
from shared.notify import Email, notifier_from_settings
from shared.settings import SharedSettings, load_settings
from shared.testing import capture_logs
from tests.support.cd_apps import cd_agent
from tests.support.notify_server import NotifyServer

GOTIFY_TOKEN = "AbCdEfGhIjKlMnO"
FAILURE = Email(
    "CI run #3 failed at test: app @ 0123456789ab",
    "CI run #3 failed at step test.\n\nLast lines of the log:\n\nFAILED tests/test_app.py::test_root\nexit 1",
    kind="failure",
)


def test_json_channel_posts_title_body_and_type(notify_server: NotifyServer):
    AppriseChannel(f"json://127.0.0.1:{notify_server.port}/hooks/ci", 1).send(FAILURE)
    [request] = notify_server.wait_for_requests(1)
    assert (request.method, request.path) == ("POST", "/hooks/ci")
    payload = request.json()
    assert payload["title"] == FAILURE.subject
    assert payload["message"] == FAILURE.body
    assert payload["type"] == "failure"


def test_form_channel_posts_the_same_as_a_form(notify_server: NotifyServer):
    AppriseChannel(f"form://127.0.0.1:{notify_server.port}/form", 1).send(Email("deployed 1.4.0", "ok", "success"))
    [request] = notify_server.wait_for_requests(1)
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = request.form()
    assert (form["title"], form["message"], form["type"]) == ("deployed 1.4.0", "ok", "success")


def test_ntfy_channel_with_a_custom_host_posts_to_the_topic(notify_server: NotifyServer):
    AppriseChannel(f"ntfy://127.0.0.1:{notify_server.port}/pi-builds", 1).send(FAILURE)
    [request] = notify_server.wait_for_requests(1)
    payload = request.json()
    assert (payload["topic"], payload["title"], payload["message"]) == ("pi-builds", FAILURE.subject, FAILURE.body)


def test_gotify_channel_sends_the_app_token_and_a_priority(start_notify_server):
    server = start_notify_server(answer={"id": 1})
    AppriseChannel(f"gotify://127.0.0.1:{server.port}/{GOTIFY_TOKEN}", 1).send(FAILURE)
    [request] = server.wait_for_requests(1)
    assert request.path.startswith("/message")
    assert request.headers.get("X-Gotify-Key") == GOTIFY_TOKEN or GOTIFY_TOKEN in request.path
    payload = request.json()
    assert (payload["title"], payload["message"]) == (FAILURE.subject, FAILURE.body)


def test_a_long_log_tail_is_cut_to_the_service_limit_keeping_the_last_lines(notify_server: NotifyServer):
    channel = AppriseChannel(f"ntfy://127.0.0.1:{notify_server.port}/pi-builds", 1)
    lines = "\n".join(f"pytest output line {n:05d}" for n in range(3000))
    channel.send(Email("CI run #9 failed at test", "CI run #9 failed at step test.\n\n" + lines, "failure"))
    [request] = notify_server.wait_for_requests(1)
    # Over ntfy's 4 KB message limit Apprise posts the text as an attachment (title line, then the body).
    assert "filename=" in request.path
    title, _, message = request.text.partition("\n")
    assert title == "CI run #9 failed at test"
    assert len(message) <= 7800  # Apprise's ntfy body limit
    assert message.startswith("CI run #9 failed at step test.")
    assert "characters cut" in message
    assert message.endswith("pytest output line 02999")


def test_an_error_answer_becomes_a_notify_error_without_the_token(start_notify_server):
    server = start_notify_server(status=500)
    channel = AppriseChannel(f"gotify://127.0.0.1:{server.port}/{GOTIFY_TOKEN}", 2)
    with pytest.raises(NotifyError) as caught:
        channel.send(FAILURE)
    assert "500" in str(caught.value)
    assert GOTIFY_TOKEN not in str(caught.value)
    assert channel.label == "NOTIFY_URLS #2 (gotify://127.0.0.1)"


def test_split_urls_keeps_a_comma_inside_a_url():
    assert split_urls("json://h.example/a?to=x,y, ntfys://ntfy.sh/t;form://f.example/p") == [
        "json://h.example/a?to=x,y", "ntfys://ntfy.sh/t", "form://f.example/p",
    ]


def test_start_up_names_a_bad_url_by_position_scheme_and_host_only():
    token = "5555555555:AAHtelegramSecretPart42"
    settings = load_settings(
        SharedSettings, {"NOTIFY_URLS": f"ntfys://ntfy.sh/ok-topic, nosuch://me:{token}@hooks.example.org/x"}
    )
    with pytest.raises(SettingsError) as caught:
        notifier_from_settings(settings)
    message = str(caught.value)
    assert "NOTIFY_URLS #2 (nosuch://hooks.example.org) is not a URL Apprise understands" in message
    assert "#1" not in message
    assert token not in message and "AAHtelegramSecretPart42" not in message


def test_good_urls_give_one_channel_each_and_say_so_without_secrets(notify_server: NotifyServer):
    settings = load_settings(
        SharedSettings, {"NOTIFY_URLS": f"json://127.0.0.1:{notify_server.port}/a,gotify://127.0.0.1/{GOTIFY_TOKEN}"}
    )
    with capture_logs("INFO") as logs:
        notifier = notifier_from_settings(settings)
    assert [channel.label for channel in notifier.channels] == [
        "NOTIFY_URLS #1 (json://127.0.0.1)", "NOTIFY_URLS #2 (gotify://127.0.0.1)",
    ]
    assert any("notifications on:" in entry.message for entry in logs)
    assert not any(GOTIFY_TOKEN in entry.message for entry in logs)


def test_cd_agent_refuses_to_start_with_a_url_apprise_does_not_understand(tmp_path):
    environ = {
        "CD_IMAGE": "127.0.0.1:5000/o/app", "CD_CONTAINER_NAME": "app",
        "NOTIFY_URLS": "tgram://not-a-bot-token/", "STATE_DIR": str(tmp_path / "state"),
    }
    result = cd_agent("deploy", "1.0.0", environ=environ, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "NOTIFY_URLS #1 (tgram://…) is not a URL Apprise understands" in result.stderr
    assert "not-a-bot-token" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
