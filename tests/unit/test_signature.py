"""verify_signature: HMAC-SHA256 over the raw body with GitHub's ``sha256=`` prefix."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pydantic import SecretStr

from ci_agent.signature import sign, verify_signature

SECRET = SecretStr("It's a Secret to Everybody")
BODY = b"Hello, World!"
# GitHub's documented example: https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
GITHUB_EXAMPLE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_githubs_documented_example_verifies():
    assert sign(SECRET, BODY) == GITHUB_EXAMPLE
    assert verify_signature(SECRET, BODY, GITHUB_EXAMPLE) is True


def test_upper_case_hex_verifies():
    assert verify_signature(SECRET, BODY, "sha256=" + GITHUB_EXAMPLE.removeprefix("sha256=").upper())


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        "sha256=deadbeef",
        GITHUB_EXAMPLE[:-1] + "0",
        GITHUB_EXAMPLE.removeprefix("sha256="),
        "sha1=" + hmac.new(b"It's a Secret to Everybody", BODY, hashlib.sha1).hexdigest(),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1ä",
    ],
)
def test_bad_headers_are_refused(header):
    assert verify_signature(SECRET, BODY, header) is False


def test_another_body_is_refused():
    assert verify_signature(SECRET, BODY + b" ", GITHUB_EXAMPLE) is False


def test_another_secret_is_refused():
    assert verify_signature(SecretStr("other"), BODY, GITHUB_EXAMPLE) is False
