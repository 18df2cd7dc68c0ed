"""Pure parts of the CI agent's listeners: the dashboard token check, the connection cap, the refusal log limit."""

from __future__ import annotations

import base64

import pytest
from pydantic import SecretStr

from ci_agent.server import FD_RESERVE, MAX_CONNECTIONS, connection_cap
from shared.access_tokens import presented_token, token_matches
from shared.refusals import REFUSALS_LOGGED_PER_WINDOW, RefusalCounter

TOKEN = SecretStr("a-dashboard-token-of-some-length")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc  ", "abc"),
        (basic("me", "pw:with:colons"), "pw:with:colons"),  # RFC 7617: the user id has no colon, the password may
        (basic("", "pw"), "pw"),
        ("Bearer", None),
        ("Basic not-base64!", None),
        ("Basic " + base64.b64encode(b"no colon").decode(), None),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), None),
        ("Digest abc", None),
        ("", None),
        (None, None),
    ],
)
def test_presented_token(header: str | None, expected: str | None) -> None:
    assert presented_token(header) == expected


def test_token_matches_only_the_exact_token() -> None:
    value = TOKEN.get_secret_value()
    assert token_matches(TOKEN, f"Bearer {value}")
    assert token_matches(TOKEN, basic("x", value))
    for wrong in (value[:-1], value + "x", value.upper(), "", "é" + value):
        assert not token_matches(TOKEN, f"Bearer {wrong}"), wrong


@pytest.mark.parametrize(
    ("file_limit", "listeners", "expected"),
    [
        (1024, 2, (1024 - FD_RESERVE) // 2),
        (8192, 2, MAX_CONNECTIONS),
        (65536, 2, MAX_CONNECTIONS),
        (600, 2, 44),
        (100, 2, 16),  # never below a handful, even when the limit leaves no room
    ],
)
def test_connection_cap_leaves_descriptors_for_the_worker(file_limit: int, listeners: int, expected: int) -> None:
    assert connection_cap(file_limit, listeners) == expected


def test_refusals_are_logged_a_limited_number_of_times_per_window() -> None:
    counter = RefusalCounter()
    results = [counter.count() for _ in range(REFUSALS_LOGGED_PER_WINDOW + 5)]
    assert results[:REFUSALS_LOGGED_PER_WINDOW] == [0] * REFUSALS_LOGGED_PER_WINDOW
    assert results[REFUSALS_LOGGED_PER_WINDOW:] == [None] * 5
    counter.window_start -= 3600  # the next window: the first refusal reports the 5 left out
    assert counter.count() == 5
    assert counter.count() == 0
