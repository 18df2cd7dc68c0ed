"""``SMTP_SECURITY=none`` with a login: one start-up warning, never with the password, none on loopback.

Which hosts count as loopback follows RFC 6761 (``localhost`` and ``*.localhost``) and Python's
``ipaddress.is_loopback`` (127.0.0.0/8, ::1, and IPv4-mapped 127.x); no name is looked up in DNS.
"""

from __future__ import annotations

import pytest

from shared.notify import notifier_from_settings
from shared.settings import SharedSettings, is_loopback_host, load_settings
from shared.testing import capture_logs

PASSWORD = "clear-text-Zq8-never-logged"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("mail.localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost.example.com", False),
        ("127.0.0.1.nip.io", False),
        ("10.0.0.1", False),
        ("192.168.1.20", False),
        ("::ffff:10.0.0.1", False),
        ("smtp.gmail.com", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def settings(**environ: str) -> SharedSettings:
    base = {
        "SMTP_HOST": "smtp.example.invalid", "SMTP_PORT": "25", "SMTP_SECURITY": "none",
        "SMTP_USERNAME": "ci@example.invalid", "SMTP_PASSWORD": PASSWORD,
        "NOTIFY_FROM": "ci@example.invalid", "NOTIFY_TO": "dev@example.invalid",
    }
    return load_settings(SharedSettings, {**base, **environ})


@pytest.mark.parametrize(
    ("environ", "in_clear"),
    [
        ({}, True),
        ({"SMTP_SECURITY": "starttls"}, False),
        ({"SMTP_SECURITY": "ssl"}, False),
        ({"SMTP_HOST": "127.0.0.1"}, False),
        ({"SMTP_HOST": "localhost"}, False),
        ({"SMTP_USERNAME": ""}, False),  # no login, so no password is sent at all
        ({"SMTP_HOST": ""}, False),  # email off
    ],
)
def test_when_the_login_crosses_the_network_in_clear(environ: dict[str, str], in_clear: bool) -> None:
    assert settings(**environ).smtp_login_in_clear is in_clear


def test_the_warning_is_given_once_names_the_fix_and_never_the_password() -> None:
    with capture_logs("WARNING") as entries:
        notifier_from_settings(settings())
    warnings = [entry.message for entry in entries if entry.level == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "SMTP_SECURITY=none" in warnings[0]
    assert "smtp.example.invalid:25" in warnings[0]
    assert "starttls" in warnings[0]
    assert PASSWORD not in warnings[0]


@pytest.mark.parametrize("environ", [{"SMTP_SECURITY": "starttls"}, {"SMTP_HOST": "127.0.0.1"}, {"SMTP_USERNAME": ""}])
def test_no_warning_when_nothing_crosses_the_network_in_clear(environ: dict[str, str]) -> None:
    with capture_logs("WARNING") as entries:
        notifier_from_settings(settings(**environ))
    assert [entry.message for entry in entries] == []
