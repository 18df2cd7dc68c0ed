"""``probe_url`` (CD_HEALTH_URL's probe) against real HTTP servers on loopback: which redirects it follows,
and that the proxy environment variables never route it."""

from __future__ import annotations

import pytest

from cd_agent.health import MAX_REDIRECTS, probe_url
from tests.support.loopback_http import LoopbackHttp


def test_a_redirect_to_another_port_is_a_failed_probe_naming_status_and_location() -> None:
    with LoopbackHttp(body=b"host-only") as elsewhere:
        with LoopbackHttp(302, {"Location": elsewhere.url + "admin"}) as app:
            ok, seen = probe_url(app.url + "health", 2)
    assert not ok
    assert "HTTP 302" in seen and repr(elsewhere.url + "admin") in seen, seen
    assert elsewhere.requests == []


def test_a_redirect_within_the_same_origin_is_followed() -> None:
    with LoopbackHttp(301, {"Location": "/health/"}) as app:
        ok, seen = probe_url(app.url + "health", 2)
        # The same server answers 301 to every path: the probe gives up after MAX_REDIRECTS hops.
        assert [path for path, _ in app.requests] == ["/health"] + ["/health/"] * MAX_REDIRECTS
    assert not ok and f"more than {MAX_REDIRECTS} redirects" in seen, seen

    with LoopbackHttp(body=b"fine") as target:
        # A different port is another origin, even on the same host.
        with LoopbackHttp(307, {"Location": f"http://127.0.0.1:{target.port}/"}) as app:
            assert probe_url(app.url, 2)[0] is False
        assert target.requests == []


def test_a_relative_redirect_to_a_healthy_path_passes() -> None:
    with LoopbackHttp(308, {"Location": "/ready"}, routes={"/ready": (200, {})}) as app:
        ok, seen = probe_url(app.url + "health", 2)
        assert [path for path, _ in app.requests] == ["/health", "/ready"]
    assert ok, seen


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_proxy_variables_are_ignored(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    with LoopbackHttp(502, body=b"proxy") as proxy, LoopbackHttp(body=b"app") as app:
        monkeypatch.setenv(variable, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        ok, seen = probe_url(app.url + "health", 2)
    assert ok, seen
    assert proxy.requests == [] and [path for path, _ in app.requests] == ["/health"]
