"""RegistryClient against fake registries written as plain functions (httpx.MockTransport).

The real registry is exercised in tests/integration/test_registry*.py; these cover what a local
registry will not do on demand: Docker Hub's token flow, rate limits, 5xx, cut-off bodies, timeouts.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from shared.errors import (
    RateLimited,
    RegistryAuthError,
    RegistryError,
    RegistryLinkRefused,
    RegistryNotFound,
    RegistryUnavailable,
)
from shared.registry import (
    DOCKER_MANIFEST,
    MANIFEST_ACCEPT,
    MAX_TAG_PAGES,
    MAX_TAGS,
    OCI_INDEX,
    RateLimit,
    RegistryClient,
    parse_image_ref,
)
from shared.testing import capture_logs

Handler = Callable[[httpx.Request], httpx.Response]
PASSWORD = "s3cret-token-value"
HUB_CHALLENGE = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:o/app:pull"'


def client_for(handler: Handler, ref: str = "127.0.0.1:5000/o/app", **kwargs: Any) -> RegistryClient:
    return RegistryClient(parse_image_ref(ref), transport=httpx.MockTransport(handler), **kwargs)


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def errors_body(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message}]}


# -- tags -----------------------------------------------------------------------------------------


def paged_tags(request: httpx.Request) -> httpx.Response:
    pages = {None: ["0.1.0", "0.2.0"], "0.2.0": ["1.0.0", "1.1.0"], "1.1.0": ["latest"]}
    last = request.url.params.get("last")
    assert request.url.params["n"] == "2"
    tags = pages[last]
    headers = {}
    if tags[-1] in pages:
        headers["Link"] = f'</v2/o/app/tags/list?last={tags[-1]}&n=2>; rel="next"'
    return httpx.Response(200, json={"name": "o/app", "tags": tags}, headers=headers)


def test_list_tags_follows_link_pagination() -> None:
    with client_for(paged_tags) as client:
        assert client.list_tags(page_size=2) == ["0.1.0", "0.2.0", "1.0.0", "1.1.0", "latest"]


def test_list_tags_of_an_unknown_repository_is_empty() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json=errors_body("NAME_UNKNOWN", "repository name not known to registry"))

    with client_for(handler) as client:
        assert client.list_tags() == []


def test_list_tags_with_null_tags_is_empty() -> None:
    with client_for(lambda request: httpx.Response(200, json={"name": "o/app", "tags": None})) as client:
        assert client.list_tags() == []


def test_list_tags_without_a_tag_list_is_a_registry_error() -> None:
    with client_for(lambda request: httpx.Response(200, json={"name": "o/app"})) as client:
        with pytest.raises(RegistryError, match="without a tag list"):
            client.list_tags()


def test_a_link_that_loops_is_an_error_not_an_endless_loop() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"tags": ["a"]}, headers={"Link": '</v2/o/app/tags/list?n=100>; rel="next"'})

    with client_for(handler) as client:
        with pytest.raises(RegistryError, match="loops"):
            client.list_tags()


# -- digests and labels ---------------------------------------------------------------------------

DIGEST = "sha256:" + "b" * 64


def test_manifest_digest_is_a_head_with_every_manifest_type_accepted() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    with client_for(handler) as client:
        assert client.manifest_digest("1.0.0") == DIGEST
    assert [(r.method, r.url.path) for r in seen] == [("HEAD", "/v2/o/app/manifests/1.0.0")]
    for media_type in (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ):
        assert media_type in seen[0].headers["Accept"]
    assert seen[0].headers["Accept"] == MANIFEST_ACCEPT


def test_manifest_digest_of_a_missing_tag_is_none() -> None:
    with client_for(lambda request: httpx.Response(404)) as client:
        assert client.manifest_digest("9.9.9") is None


def test_manifest_digest_without_the_header_is_the_sha256_of_the_manifest() -> None:
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": DIGEST}}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"" if request.method == "HEAD" else manifest)

    with client_for(handler) as client:
        assert client.manifest_digest("1.0.0") == "sha256:" + hashlib.sha256(manifest).hexdigest()


def registry_with_index(labels: dict[str, str] | None) -> Handler:
    config: dict[str, Any] = {"architecture": "arm64", "os": "linux", "config": {}}
    if labels is not None:
        config["config"]["Labels"] = labels
    blobs = {"sha256:" + "c" * 64: config}
    manifests: dict[str, dict[str, Any]] = {
        "1.0.0": {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": "sha256:" + "0" * 64, "platform": {"os": "unknown", "architecture": "unknown"}},
                {"digest": "sha256:" + "1" * 64, "platform": {"os": "windows", "architecture": "amd64"}},
                {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
            ],
        },
        "sha256:" + "2" * 64: {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "c" * 64},
            "layers": [],
        },
    }

    def handler(request: httpx.Request) -> httpx.Response:
        kind, _, reference = request.url.path.removeprefix("/v2/o/app/").partition("/")
        table: dict[str, dict[str, Any]] = manifests if kind == "manifests" else blobs
        if reference not in table:
            return httpx.Response(404, json=errors_body("MANIFEST_UNKNOWN", "manifest unknown"))
        return httpx.Response(200, json=table[reference])

    return handler


def test_image_labels_follow_the_index_to_the_linux_image_config() -> None:
    labels = {"org.opencontainers.image.version": "1.0.0", "maintainer": "me"}
    with client_for(registry_with_index(labels)) as client:
        assert client.image_labels("1.0.0") == labels


def test_image_labels_of_an_image_without_labels_are_empty() -> None:
    with client_for(registry_with_index(None)) as client:
        assert client.image_labels("1.0.0") == {}


def test_image_labels_of_a_missing_tag_raise_not_found() -> None:
    with client_for(registry_with_index({})) as client:
        with pytest.raises(RegistryNotFound, match="2.0.0"):
            client.image_labels("2.0.0")


def test_platforms_of_an_index_are_its_entries_without_attestations() -> None:
    with client_for(registry_with_index({})) as client:
        offered = client.platforms("1.0.0")
    assert offered is not None
    assert [str(item) for item in offered] == ["windows/amd64", "linux/arm64"]


def test_platforms_of_a_single_image_are_not_read_from_its_config() -> None:
    requests: list[httpx.Request] = []
    handler = registry_with_index({})

    def recording(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return handler(request)

    with client_for(recording) as client:
        assert client.platforms("sha256:" + "2" * 64) is None
    assert [request.url.path for request in requests] == ["/v2/o/app/manifests/sha256:" + "2" * 64]


@pytest.mark.parametrize(
    ("media_type", "gets"),
    [("application/vnd.docker.distribution.manifest.v2+json", 0), ("application/vnd.oci.image.index.v1+json", 1)],
)
def test_a_single_image_known_from_its_head_costs_no_manifest_get(media_type: str, gets: int) -> None:
    """A manifest GET counts against Docker Hub's pull limit: not spent when the HEAD said "single image"."""
    requests: list[httpx.Request] = []
    entry = {"digest": DIGEST, "platform": {"os": "linux", "architecture": "amd64"}}
    index = {"mediaType": media_type, "manifests": [entry]}

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json=index, headers={"Docker-Content-Digest": DIGEST, "Content-Type": media_type})

    with client_for(handler) as client:
        digest = client.manifest_digest("1.0.0")
        assert digest == DIGEST
        client.platforms(digest)
    assert [request.method for request in requests].count("GET") == gets


def test_platforms_of_a_buildx_style_index_with_arm_variants() -> None:
    """The shape buildx pushes for --platform linux/amd64,linux/arm/v7 with provenance attestations."""
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "a" * 64, "size": 1,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "b" * 64, "size": 1,
             "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "c" * 64, "size": 1,
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
             "platform": {"architecture": "unknown", "os": "unknown"}},
        ],
    }
    with client_for(lambda request: httpx.Response(200, json=index)) as client:
        offered = client.platforms("1.0.0")
    assert offered is not None
    assert [str(item) for item in offered] == ["linux/amd64", "linux/arm/v7"]


def test_platforms_of_a_missing_tag_raise_not_found() -> None:
    with client_for(registry_with_index({})) as client:
        with pytest.raises(RegistryNotFound, match="2.0.0"):
            client.platforms("2.0.0")


# -- bearer tokens (Docker Hub's flow) -------------------------------------------------------------


class FakeHub:
    """Docker Hub in miniature: the registry wants a bearer token from auth.docker.io."""

    def __init__(self, *, expires_in: int = 300, accept: tuple[str, str] | None = None) -> None:
        self.expires_in = expires_in
        self.accept = accept
        self.token_requests: list[httpx.Request] = []
        self.issued = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.docker.io":
            self.token_requests.append(request)
            if self.accept is not None and request.headers.get("Authorization") != basic(*self.accept):
                return httpx.Response(401, json={"details": "incorrect username or password"})
            self.issued += 1
            return httpx.Response(200, json={"access_token": f"tok-{self.issued}", "expires_in": self.expires_in})
        if request.headers.get("Authorization") != f"Bearer tok-{self.issued}" or self.issued == 0:
            return httpx.Response(401, headers={"WWW-Authenticate": HUB_CHALLENGE})
        return httpx.Response(
            200,
            json={"name": "o/app", "tags": ["1.0.0"]},
            headers={"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "99;w=21600"},
        )


def test_docker_hub_bearer_challenge_anonymous() -> None:
    hub = FakeHub()
    with client_for(hub, "o/app") as client:
        assert client.list_tags() == ["1.0.0"]
        assert client.rate_limit == RateLimit(limit=100, remaining=99, window_seconds=21600)
    [token_request] = hub.token_requests
    assert token_request.url.params["service"] == "registry.docker.io"
    assert token_request.url.params["scope"] == "repository:o/app:pull"
    assert "Authorization" not in token_request.headers


def test_docker_hub_bearer_challenge_with_credentials_sends_them_to_the_token_endpoint() -> None:
    hub = FakeHub(accept=("alice", PASSWORD))
    with client_for(hub, "o/app", username="alice", password=SecretStr(PASSWORD)) as client:
        assert client.list_tags() == ["1.0.0"]
    assert hub.token_requests[0].headers["Authorization"] == basic("alice", PASSWORD)


def test_token_is_cached_per_scope_until_it_expires() -> None:
    now = [1000.0]
    hub = FakeHub(expires_in=300)
    with client_for(hub, "o/app", clock=lambda: now[0]) as client:
        client.list_tags()
        client.list_tags()
        assert len(hub.token_requests) == 1
        now[0] += 301
        client.list_tags()
        assert len(hub.token_requests) == 2


def test_refused_credentials_name_the_registry_and_user_but_not_the_password() -> None:
    hub = FakeHub(accept=("alice", "the-right-one"))
    with client_for(hub, "o/app", username="alice", password=SecretStr(PASSWORD)) as client:
        with pytest.raises(RegistryAuthError) as error:
            client.list_tags()
    message = str(error.value)
    assert "docker.io" in message
    assert "'alice'" in message
    assert PASSWORD not in message
    assert PASSWORD not in repr(error.value)


def test_a_token_the_registry_refuses_is_an_auth_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.docker.io":
            return httpx.Response(200, json={"token": "useless"})
        return httpx.Response(401, headers={"WWW-Authenticate": HUB_CHALLENGE + ',error="insufficient_scope"'})

    with client_for(handler, "o/app") as client:
        with pytest.raises(RegistryAuthError, match="refused anonymous access to o/app.*REGISTRY_USERNAME"):
            client.list_tags()


def test_token_endpoint_answer_without_a_token_is_a_registry_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.docker.io":
            return httpx.Response(200, json={"expires_in": 60})
        return httpx.Response(401, headers={"WWW-Authenticate": HUB_CHALLENGE})

    with client_for(handler, "o/app") as client:
        with pytest.raises(RegistryError, match="without a token"):
            client.list_tags()


# -- basic auth -----------------------------------------------------------------------------------


def basic_registry(user: str, password: str, log: list[httpx.Request]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request)
        if request.headers.get("Authorization") != basic(user, password):
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="Registry Realm"'})
        return httpx.Response(200, json={"tags": ["1.0.0"]})

    return handler


def test_basic_challenge_is_answered_with_basic_auth_and_then_sent_up_front() -> None:
    log: list[httpx.Request] = []
    with client_for(basic_registry("bob", PASSWORD, log), username="bob", password=SecretStr(PASSWORD)) as client:
        assert client.list_tags() == ["1.0.0"]
        assert client.list_tags() == ["1.0.0"]
    assert [request.headers.get("Authorization") is not None for request in log] == [False, True, True]


def test_basic_challenge_with_wrong_password_is_an_auth_error_without_the_password() -> None:
    log: list[httpx.Request] = []
    with client_for(basic_registry("bob", "right", log), username="bob", password=SecretStr(PASSWORD)) as client:
        with pytest.raises(RegistryAuthError) as error:
            client.list_tags()
    assert "127.0.0.1:5000" in str(error.value)
    assert "'bob'" in str(error.value)
    assert PASSWORD not in str(error.value)
    assert len(log) == 2  # one challenge, one try with the credentials: no loop


def test_basic_challenge_without_credentials_asks_for_them() -> None:
    with client_for(basic_registry("bob", "x", [])) as client:
        with pytest.raises(RegistryAuthError, match="REGISTRY_USERNAME and REGISTRY_PASSWORD"):
            client.list_tags()


def test_a_link_to_another_host_is_refused_naming_the_host_and_nothing_reaches_it() -> None:
    log: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request)
        if request.url.host == "elsewhere.example":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://elsewhere.example/token"'})
        if request.headers.get("Authorization") != basic("bob", PASSWORD):
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        link = '<https://elsewhere.example/v2/o/app/tags/list>; rel="next"'
        return httpx.Response(200, json={"tags": ["1.0.0"]}, headers={"Link": link})

    with client_for(handler, username="bob", password=SecretStr(PASSWORD)) as client:
        with pytest.raises(RegistryLinkRefused, match=r"another host, https://elsewhere\.example") as error:
            client.list_tags()
    assert error.value.host == "elsewhere.example"
    assert isinstance(error.value, RegistryError)
    assert {request.url.host for request in log} == {"127.0.0.1"}


@pytest.mark.parametrize(
    "link",
    [
        "http://127.0.0.1:5001/v2/o/app/tags/list?last=1.0.0",  # same host, another port
        "https://127.0.0.1:5000/v2/o/app/tags/list?last=1.0.0",  # same host and port, another scheme
        "//evil.example/v2/o/app/tags/list",  # scheme-relative
    ],
)
def test_links_off_the_registry_origin_are_refused(link: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert (request.url.scheme, request.url.host, request.url.port) == ("http", "127.0.0.1", 5000)
        return httpx.Response(200, json={"tags": ["1.0.0"]}, headers={"Link": f'<{link}>; rel="next"'})

    with client_for(handler) as client:
        with pytest.raises(RegistryLinkRefused, match="only pages on http://127.0.0.1:5000 are followed"):
            client.list_tags()


def test_an_absolute_link_on_the_registry_origin_is_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("last") == "1.0.0":
            return httpx.Response(200, json={"tags": ["2.0.0"]})
        link = '<http://127.0.0.1:5000/v2/o/app/tags/list?last=1.0.0>; rel="next"'
        return httpx.Response(200, json={"tags": ["1.0.0"]}, headers={"Link": link})

    with client_for(handler) as client:
        assert client.list_tags() == ["1.0.0", "2.0.0"]


def test_a_401_from_a_host_a_redirect_led_to_gets_no_credentials() -> None:
    """The registry redirects tags/list elsewhere; that host's challenge names its own realm."""
    log: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request)
        if request.url.host == "evil.example":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://evil.example/token"'})
        if request.headers.get("Authorization") != basic("bob", PASSWORD):
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(302, headers={"Location": "https://evil.example/v2/o/app/tags/list"})

    with client_for(handler, username="bob", password=SecretStr(PASSWORD)) as client:
        with pytest.raises(RegistryAuthError, match="redirected to https://evil.example, which asked for credentials"):
            client.list_tags()
    evil = [request for request in log if request.url.host == "evil.example"]
    assert evil, "the redirect was followed"
    assert all("Authorization" not in request.headers for request in evil)
    assert all(request.url.path != "/token" for request in log)


def test_docker_hub_credentials_go_only_to_the_registry_and_its_own_token_realm() -> None:
    hosts: list[tuple[str, str | None]] = []
    hub = FakeHub(accept=("alice", PASSWORD))

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append((request.url.host, request.headers.get("Authorization")))
        return hub(request)

    with client_for(handler, "o/app", username="alice", password=SecretStr(PASSWORD)) as client:
        assert client.list_tags() == ["1.0.0"]
    assert {host for host, authorization in hosts if authorization} == {"registry-1.docker.io", "auth.docker.io"}
    assert (("auth.docker.io", basic("alice", PASSWORD))) in hosts


def test_credentials_are_not_sent_to_a_plain_http_token_realm_on_another_machine() -> None:
    log: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="http://auth.example/token"'})

    with client_for(handler, "registry.example/o/app", username="bob", password=SecretStr(PASSWORD)) as client:
        with pytest.raises(RegistryError, match="refusing to send the credentials there"):
            client.list_tags()
    assert [request.url.host for request in log] == ["registry.example"]


def endless_pages(request: httpx.Request) -> httpx.Response:
    page = int(request.url.params.get("page", "0"))
    tags = [f"0.{page}.{n}" for n in range(int(request.url.params["n"]))]
    link = f'</v2/o/app/tags/list?n={request.url.params["n"]}&page={page + 1}>; rel="next"'
    return httpx.Response(200, json={"tags": tags}, headers={"Link": link})


def test_pagination_stops_at_the_page_cap_with_a_warning_and_keeps_what_it_read() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return endless_pages(request)

    with capture_logs("WARNING") as logs, client_for(handler) as client:
        tags = client.list_tags(page_size=3)
    assert len(requests) == MAX_TAG_PAGES
    assert len(tags) == MAX_TAG_PAGES * 3
    assert tags[:3] == ["0.0.0", "0.0.1", "0.0.2"]
    [warning] = [entry.message for entry in logs]
    assert f"after {MAX_TAG_PAGES} pages" in warning and "stopped there" in warning


def test_pagination_stops_at_the_tag_cap() -> None:
    with capture_logs("WARNING") as logs, client_for(endless_pages) as client:
        tags = client.list_tags(page_size=1000)
    assert len(tags) == MAX_TAGS
    assert len(logs) == 1


def test_a_repository_just_under_the_caps_is_read_in_full_without_a_warning() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "0"))
        headers = {"Link": f'</v2/o/app/tags/list?n=1&page={page + 1}>; rel="next"'} if page + 1 < MAX_TAG_PAGES else {}
        return httpx.Response(200, json={"tags": [f"1.0.{page}"]}, headers=headers)

    with capture_logs("WARNING") as logs, client_for(handler) as client:
        assert len(client.list_tags(page_size=1)) == MAX_TAG_PAGES
    assert logs == []


# -- faults ---------------------------------------------------------------------------------------


def test_429_is_rate_limited_with_retry_after_seconds() -> None:
    with client_for(lambda request: httpx.Response(429, headers={"Retry-After": "30"})) as client:
        with pytest.raises(RateLimited) as error:
            client.list_tags()
    assert error.value.retry_after == 30.0
    assert "rate limiting" in str(error.value)


def test_429_with_an_http_date_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})

    with client_for(handler) as client:
        with pytest.raises(RateLimited) as error:
            client.manifest_digest("1.0.0")
    assert error.value.retry_after == 0.0  # a date in the past: retry at once


def test_429_without_retry_after() -> None:
    with client_for(lambda request: httpx.Response(429)) as client:
        with pytest.raises(RateLimited) as error:
            client.list_tags()
    assert error.value.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_unavailable(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"Retry-After": "5"} if status == 503 else {})

    with client_for(handler) as client:
        with pytest.raises(RegistryUnavailable) as error:
            client.list_tags()
    assert not isinstance(error.value, RateLimited)
    assert str(status) in str(error.value)
    assert error.value.retry_after == (5.0 if status == 503 else None)


def test_other_4xx_is_a_registry_error_naming_the_registry_error_code() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=errors_body("NAME_INVALID", "invalid repository name"))

    with client_for(handler) as client:
        with pytest.raises(RegistryError, match="400 .NAME_INVALID: invalid repository name") as error:
            client.list_tags()
    assert not isinstance(error.value, RegistryUnavailable)


def test_forbidden_is_an_auth_error() -> None:
    with client_for(lambda request: httpx.Response(403, json=errors_body("DENIED", "denied"))) as client:
        with pytest.raises(RegistryAuthError, match="403"):
            client.manifest_digest("1.0.0")


@pytest.mark.parametrize("body", [b'{"name": "o/app", "tags": ["1.0', b"<html>bad gateway</html>", b"\xff\xfe"])
def test_truncated_or_invalid_json_is_unavailable_with_a_clear_message(body: bytes) -> None:
    with client_for(lambda request: httpx.Response(200, content=body)) as client:
        with pytest.raises(RegistryUnavailable, match="answered invalid JSON when asked to list the tags") as error:
            client.list_tags()
    assert not isinstance(error.value, json.JSONDecodeError)


@pytest.mark.parametrize(
    "exception",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
    ],
)
def test_network_errors_and_timeouts_are_unavailable(exception: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exception

    with client_for(handler) as client:
        with pytest.raises(RegistryUnavailable, match="127.0.0.1:5000") as error:
            client.list_tags()
    assert error.value.__cause__ is exception


def test_token_endpoint_down_is_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.docker.io":
            raise httpx.ConnectError("no route")
        return httpx.Response(401, headers={"WWW-Authenticate": HUB_CHALLENGE})

    with client_for(handler, "o/app") as client:
        with pytest.raises(RegistryUnavailable, match="token endpoint"):
            client.list_tags()


def test_token_endpoint_not_found_is_an_error_not_an_empty_tag_list() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.docker.io":
            return httpx.Response(404)
        return httpx.Response(401, headers={"WWW-Authenticate": HUB_CHALLENGE})

    with client_for(handler, "o/app") as client:
        with pytest.raises(RegistryError, match="token endpoint https://auth.docker.io/token .* answered 404") as error:
            client.list_tags()
    assert not isinstance(error.value, RegistryNotFound)


def test_token_endpoint_rate_limit_is_rate_limited() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.docker.io":
            return httpx.Response(429, headers={"Retry-After": "12"})
        return httpx.Response(401, headers={"WWW-Authenticate": HUB_CHALLENGE})

    with client_for(handler, "o/app") as client:
        with pytest.raises(RateLimited) as error:
            client.list_tags()
    assert error.value.retry_after == 12.0


def test_put_index_asks_for_a_push_token_and_puts_the_oci_index_of_the_entries() -> None:
    """The one write: an OCI index of manifests already in the repository, with a pull,push token."""
    from shared.platforms import parse_platform
    from shared.registry import IndexEntry

    seen: dict[str, Any] = {}

    def registry(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.docker.io":
            seen["scope"] = request.url.params["scope"]
            return httpx.Response(200, json={"token": "push-token"})
        if request.headers.get("authorization") != "Bearer push-token":
            challenge = HUB_CHALLENGE.replace(":pull", ":pull,push") if request.method == "PUT" else HUB_CHALLENGE
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        seen["type"], seen["body"] = request.headers["content-type"], json.loads(request.content)
        return httpx.Response(201)

    entries = [
        IndexEntry("sha256:" + "a" * 64, 943, DOCKER_MANIFEST, parse_platform("linux/amd64")),
        IndexEntry("sha256:" + "b" * 64, 943, DOCKER_MANIFEST, parse_platform("linux/arm/v7")),
    ]
    digest = client_for(registry, "docker.io/o/app", username="u", password=SecretStr("p")).put_index("1.2.0", entries)
    assert seen["scope"] == "repository:o/app:pull,push"
    assert seen["type"] == OCI_INDEX
    assert seen["body"]["mediaType"] == OCI_INDEX
    assert [entry["platform"] for entry in seen["body"]["manifests"]] == [
        {"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm", "variant": "v7"},
    ]
    assert digest.startswith("sha256:") and len(digest) == 71


def test_entry_refuses_what_is_not_an_image_manifest() -> None:
    from shared.platforms import parse_platform

    def registry(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": OCI_INDEX, "Content-Length": "300"})

    with pytest.raises(RegistryError, match="not an image manifest"):
        client_for(registry).entry("sha256:" + "c" * 64, parse_platform("linux/arm64"))
