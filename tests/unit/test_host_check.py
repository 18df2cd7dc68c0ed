"""The host rule of private pages (shared/host_check.py): which ``Host`` headers are answered."""

from __future__ import annotations

import pytest

from shared.host_check import allows_host, host_name, own_names

NAMES = own_names("pi.lan", "https://ci.example.org:8443/dashboard")


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8001", "localhost"),
        ("127.0.0.1:8001", "127.0.0.1"),
        ("[::1]:8001", "::1"),
        ("[::1]", "::1"),
        ("pi.lan.", "pi.lan"),
        ("[::1", None),
        ("::1", None),
        ("a b", None),
        ("user@localhost", None),
        ("localhost:port", None),
        ("", None),
    ],
)
def test_host_name(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_own_names_takes_hosts_and_urls() -> None:
    assert NAMES == {"pi.lan", "ci.example.org"}
    assert own_names(None, "", "[::1]:8001", "pi.lan.") == {"::1", "pi.lan"}
    assert own_names("FD00::5", "http://[fd00::6]:8001/") == {"fd00::5", "fd00::6"}
    assert allows_host("[fd00::5]:8001", own_names("fd00::5"))


@pytest.mark.parametrize(
    "header",
    ["localhost", "localhost:8001", "app.localhost:8001", "127.0.0.1:8001", "127.8.9.10", "[::1]:8001",
     "[::ffff:127.0.0.1]", "pi.lan:8001", "PI.LAN", "ci.example.org", "ci.example.org:443"],
)
def test_loopback_and_own_names_are_answered(header: str) -> None:
    assert allows_host(header, NAMES)


@pytest.mark.parametrize(
    "header",
    [None, "", "rebind.attacker.example", "rebind.attacker.example:8001", "localhost.attacker.example",
     "127.0.0.1.attacker.example", "192.168.1.5:8001", "[2001:db8::1]:8001", "ci.example.org.evil", "[::1",
     "localhost:8001:1"],
)
def test_other_names_are_refused(header: str | None) -> None:
    assert not allows_host(header, NAMES)
