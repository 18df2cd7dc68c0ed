"""Image references: parsing, normalising and the URLs derived from them (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.registry import (
    ImageRef,
    RateLimit,
    is_loopback,
    parse_challenge,
    parse_image_ref,
    parse_rate_limit,
    parse_retry_after,
)

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("owner/app", ImageRef("docker.io", "owner/app")),
        ("app", ImageRef("docker.io", "library/app")),
        ("app:1.2.3", ImageRef("docker.io", "library/app", "1.2.3")),
        ("docker.io/owner/app", ImageRef("docker.io", "owner/app")),
        ("docker.io/app", ImageRef("docker.io", "library/app")),
        ("index.docker.io/owner/app:latest", ImageRef("docker.io", "owner/app", "latest")),
        ("registry-1.docker.io/owner/app", ImageRef("docker.io", "owner/app")),
        ("127.0.0.1:5000/o/app", ImageRef("127.0.0.1:5000", "o/app")),
        ("127.0.0.1:5000/o/app:0.1.0", ImageRef("127.0.0.1:5000", "o/app", "0.1.0")),
        ("localhost:5000/x", ImageRef("localhost:5000", "x")),
        ("localhost/x", ImageRef("localhost", "x")),
        ("ghcr.io/o/a", ImageRef("ghcr.io", "o/a")),
        ("ghcr.io/o/a:v1.0.0-rc.1", ImageRef("ghcr.io", "o/a", "v1.0.0-rc.1")),
        ("ghcr.io/org/team/app", ImageRef("ghcr.io", "org/team/app")),
        ("[::1]:5000/o/app", ImageRef("[::1]:5000", "o/app")),
        ("my-registry.example.com:8443/a_b/c-d.e", ImageRef("my-registry.example.com:8443", "a_b/c-d.e")),
        ("owner/app:sha-abc_DEF", ImageRef("docker.io", "owner/app", "sha-abc_DEF")),
        (f"owner/app@{DIGEST}", ImageRef("docker.io", "owner/app", None, DIGEST)),
        (f"ghcr.io/o/a:1.0.0@{DIGEST}", ImageRef("ghcr.io", "o/a", "1.0.0", DIGEST)),
        ("  owner/app  ", ImageRef("docker.io", "owner/app")),
        ("a__b/c---d", ImageRef("docker.io", "a__b/c---d")),
    ],
)
def test_parse_image_ref(text: str, expected: ImageRef) -> None:
    assert parse_image_ref(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("Owner/app", "lowercase"),
        ("owner/App", "lowercase"),
        ("ghcr.io/Owner/app", "lowercase"),
        ("owner//app", "invalid repository part ''"),
        ("owner/app/", "invalid repository part ''"),
        ("-owner/app", "invalid repository part '-owner'"),
        ("owner/app.", "invalid repository part 'app.'"),
        ("owner/a..b", "invalid repository part"),
        ("owner/app:", "invalid tag ''"),
        ("owner/app:-x", "invalid tag '-x'"),
        ("owner/app:" + "x" * 129, "invalid tag"),
        ("owner/app:1.0:2.0", "invalid repository part 'app:1.0'"),
        ("owner/app@sha256:xyz", "invalid digest"),
        ("owner/app@", "invalid digest"),
        ("https://ghcr.io/o/a", "URL scheme"),
        ("owner/my app", "whitespace"),
        ("127.0.0.1:5000/", "no repository name"),
        ("bad_host.io:5000/o/app", "invalid registry host 'bad_host.io:5000'"),
        ("ghcr.io/" + "a" * 300, "longer than 255"),
    ],
)
def test_parse_image_ref_rejects_bad_input_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="image reference") as error:
        parse_image_ref(text)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("text", "api_url"),
    [
        ("owner/app", "https://registry-1.docker.io"),
        ("app", "https://registry-1.docker.io"),
        ("127.0.0.1:5000/o/app", "http://127.0.0.1:5000"),
        ("127.5.6.7:5000/o/app", "http://127.5.6.7:5000"),
        ("localhost:5000/x", "http://localhost:5000"),
        ("localhost/x", "http://localhost"),
        ("[::1]:5000/x", "http://[::1]:5000"),
        ("ghcr.io/o/a", "https://ghcr.io"),
        ("10.0.0.5:5000/o/a", "https://10.0.0.5:5000"),
        ("localhost.example.com/o/a", "https://localhost.example.com"),
    ],
)
def test_api_url_is_plain_http_only_for_loopback_registries(text: str, api_url: str) -> None:
    assert parse_image_ref(text).api_url == api_url


@pytest.mark.parametrize(
    ("text", "name", "tagged"),
    [
        ("owner/app:1.0.0", "docker.io/owner/app", "docker.io/owner/app:2.0.0"),
        ("app", "docker.io/library/app", "docker.io/library/app:2.0.0"),
        ("127.0.0.1:5000/o/app:latest", "127.0.0.1:5000/o/app", "127.0.0.1:5000/o/app:2.0.0"),
    ],
)
def test_name_and_with_tag_leave_out_the_parsed_tag(text: str, name: str, tagged: str) -> None:
    ref = parse_image_ref(text)
    assert ref.name == name
    assert ref.with_tag("2.0.0") == tagged


def test_str_round_trips_through_the_parser() -> None:
    ref = parse_image_ref(f"ghcr.io/o/a:1.0.0@{DIGEST}")
    assert str(ref) == f"ghcr.io/o/a:1.0.0@{DIGEST}"
    assert parse_image_ref(str(ref)) == ref


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.1:5000", True),
        ("127.255.0.1:80", True),
        ("localhost:5000", True),
        ("LOCALHOST", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("10.0.0.1:5000", False),
        ("ghcr.io", False),
        ("128.0.0.1", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"}, RateLimit(100, 76, 21600)),
        ({"ratelimit-limit": "200", "ratelimit-remaining": "0"}, RateLimit(200, 0, None)),
        ({"ratelimit-limit": "100;w=21600"}, None),
        ({}, None),
        ({"ratelimit-limit": "lots", "ratelimit-remaining": "some"}, None),
    ],
)
def test_parse_rate_limit(headers: dict[str, str], expected: RateLimit | None) -> None:
    assert parse_rate_limit(headers) == expected


NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Wed, 01 May 2024 12:00:30 GMT", 30.0),
        ("Wed, 01 May 2024 11:59:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_parse_challenge_reads_docker_hub_bearer_parameters() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull,push",error="insufficient_scope"'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/ubuntu:pull,push",
        "error": "insufficient_scope",
    }


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        ('Basic realm="Registry Realm"', "basic", {"realm": "Registry Realm"}),
        ("Basic realm=private", "basic", {"realm": "private"}),
        ('BEARER Realm="http://127.0.0.1:1/token"', "bearer", {"realm": "http://127.0.0.1:1/token"}),
    ],
)
def test_parse_challenge_schemes(header: str, scheme: str, params: dict[str, str]) -> None:
    challenge = parse_challenge(header)
    assert challenge is not None
    assert (challenge.scheme, dict(challenge.params)) == (scheme, params)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_parse_challenge_without_header(header: str | None) -> None:
    assert parse_challenge(header) is None
