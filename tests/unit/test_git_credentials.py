"""How a repository URL's credentials reach git: never in argv, as a URL-scoped header in the environment."""

from __future__ import annotations

import base64

import pytest

from ci_agent.git import remote_access


def test_a_token_moves_from_the_url_to_a_scoped_authorization_header() -> None:
    url, env = remote_access("https://x-access-token:ghp_s3cr%40t@github.com/owner/app.git")

    assert url == "https://github.com/owner/app.git"
    assert env["GIT_CONFIG_COUNT"] == "1"
    assert env["GIT_CONFIG_KEY_0"] == "http.https://github.com/owner/app.git.extraHeader"
    scheme, _, encoded = env["GIT_CONFIG_VALUE_0"].removeprefix("Authorization: ").partition(" ")
    assert scheme == "Basic"
    # Percent-escapes in the URL are undone: the server gets the token as the user wrote it.
    assert base64.b64decode(encoded).decode() == "x-access-token:ghp_s3cr@t"


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/owner/app.git",
        "https://someone@github.com/owner/app.git",  # a user name alone is no secret
        "git@github.com:owner/app.git",
        "ssh://git@github.com/owner/app.git",
        "file:///srv/git/app.git",
    ],
)
def test_urls_without_a_password_are_left_alone(url: str) -> None:
    assert remote_access(url) == (url, {})
