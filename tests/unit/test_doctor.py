"""The checks of ``shared/doctor.py`` that are pure logic over a reading (clock, disk), the one error boundary,
the report (lines, JSON, exit codes, masking), and ``RegistryClient.check_push`` / ``server_date`` driven through
``httpx.MockTransport`` as tests/unit/test_registry_client.py drives the rest of the client."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from shared.disk import DiskReading
from shared.doctor import (
    CLOCK_SKEW_WARN,
    Report,
    checked,
    clock_finding,
    disk_finding,
    environment_secrets,
    fail,
    ok,
    warn,
)
from shared.errors import RegistryAuthError, RegistryUnavailable
from shared.registry import RegistryClient, parse_http_date, parse_image_ref

NOW = datetime(2026, 12, 7, 21, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("skew", "level"), [(0.0, "ok"), (CLOCK_SKEW_WARN - 1, "ok"), (-(CLOCK_SKEW_WARN - 1), "ok"),
                        (CLOCK_SKEW_WARN + 5, "warn"), (-600.0, "warn")],
)
def test_clock_compares_with_the_registry_date(skew: float, level: str) -> None:
    registry_time = datetime.fromtimestamp(NOW - skew, tz=UTC)
    finding = clock_finding("ghcr.io", lambda: registry_time, now=lambda: NOW)
    assert finding.level == level
    if level == "warn":
        assert ("ahead of" if skew > 0 else "behind") in finding.detail
        assert "timedatectl set-ntp true" in finding.fix


def test_clock_without_a_date_or_a_registry_is_a_warning_not_a_failure() -> None:
    assert clock_finding("r.example", lambda: None, now=lambda: NOW).level == "warn"

    def unreachable() -> datetime | None:
        raise RegistryUnavailable("cannot reach registry r.example (GET /v2/): connection refused")

    finding = clock_finding("r.example", unreachable, now=lambda: NOW)
    assert (finding.level, finding.detail) == ("warn", "not compared: cannot reach registry r.example (GET /v2/): "
                                                        "connection refused")


def test_disk_against_the_floor() -> None:
    reading = DiskReading("/var/lib/docker", 3 * 10**9)
    assert disk_finding(2 * 10**9, lambda: reading).level == "ok"
    low = disk_finding(5 * 10**9, lambda: reading)
    assert low.level == "FAIL"
    assert low.detail == "only 3.0 GB free where Docker keeps its data (/var/lib/docker), below DISK_MIN_FREE=5.0 GB"
    assert "docker image prune" in low.fix
    unread = disk_finding(10**9, lambda: "the engine is not on this machine (DOCKER_HOST=tcp://pi:2375)")
    assert (unread.level, unread.detail) == ("warn", "not checked: the engine is not on this machine "
                                                     "(DOCKER_HOST=tcp://pi:2375)")
    assert disk_finding(0, lambda: reading).level == "warn"


def test_checked_turns_errors_into_failures_and_keeps_going() -> None:
    def refused() -> object:
        raise RegistryAuthError("registry r refused the credentials of user 'u'")

    finding = checked("registry", refused, lambda exc: f"fix {type(exc).__name__}")  # type: ignore[arg-type]
    assert (finding.level, finding.detail, finding.fix) == (
        "FAIL", "registry r refused the credentials of user 'u'", "fix RegistryAuthError")

    def bug() -> object:
        raise KeyError("Version")

    finding = checked("docker", bug, lambda exc: "")  # type: ignore[arg-type]
    assert (finding.level, finding.detail) == ("FAIL", "unexpected KeyError: 'Version'")


def test_report_lines_exit_codes_and_masking() -> None:
    report = Report(secrets=["s3cr3t-value"])
    report.add(ok("settings", "valid"))
    report.add(warn("clock [r]", "40s ahead", "timedatectl set-ntp true"))
    assert report.exit_code == 0
    assert report.text().splitlines() == [
        "ok    settings: valid",
        "warn  clock [r]: 40s ahead -> timedatectl set-ntp true",
        "ready (2 checks, 1 warning(s))",
    ]
    report.add(fail("registry", "refused password s3cr3t-value", "check REGISTRY_PASSWORD"))
    assert report.exit_code == 1
    assert "s3cr3t-value" not in report.text() and "s3cr3t-value" not in report.json()
    assert report.text().splitlines()[-1] == "1 check(s) failed, 1 warning(s): not ready"
    data = json.loads(report.json())
    assert (data["ready"], data["exit_code"]) == (False, 1)
    assert data["checks"][2] == {"check": "registry", "level": "FAIL", "detail": "refused password ***",
                                 "fix": "check REGISTRY_PASSWORD"}
    bad = Report()
    bad.add(fail("settings", "invalid settings: CD_PORTS='x'", "correct it"))
    assert bad.exit_code == 2


def test_environment_secrets_are_what_looks_secret() -> None:
    environ = {"REGISTRY_PASSWORD": "pw-123456", "CI_GITHUB_TOKEN": "ghp_x1234", "CI_WEBHOOK_SECRET": "whs-99",
               "CD_IMAGE": "ghcr.io/me/app", "NOTIFY_URLS": "tgram://bot/chat", "SMTP_PASSWORD": ""}
    assert sorted(environment_secrets(environ)) == ["ghp_x1234", "pw-123456", "tgram://bot/chat", "whs-99"]


def test_parse_http_date() -> None:
    assert parse_http_date("Mon, 07 Dec 2026 21:00:00 GMT") == datetime(2026, 12, 7, 21, 0, tzinfo=UTC)
    assert parse_http_date("yesterday") is None
    assert parse_http_date(None) is None


# -- RegistryClient.check_push / server_date ---------------------------------------------------------------

REF = parse_image_ref("127.0.0.1:5000/me/app")


def test_check_push_starts_an_upload_and_cancels_it() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "/v2/me/app/blobs/uploads/abc?_state=x"})
        return httpx.Response(204)

    with RegistryClient(REF, transport=httpx.MockTransport(handler)) as client:
        assert client.check_push() is True
    assert seen == [("POST", "/v2/me/app/blobs/uploads/"), ("DELETE", "/v2/me/app/blobs/uploads/abc")]


def test_check_push_refused_and_an_upload_elsewhere() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "requested access is denied"}]})

    with RegistryClient(REF, transport=httpx.MockTransport(refused)) as client, pytest.raises(RegistryAuthError):
        client.check_push()

    seen: list[str] = []

    def elsewhere(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return httpx.Response(202, headers={"Location": "https://storage.example/upload/abc"})

    # An upload on another host is left to expire there: nothing (no credentials either) is sent to it.
    with RegistryClient(REF, transport=httpx.MockTransport(elsewhere)) as client:
        assert client.check_push() is False
    assert seen == ["POST"]


def test_server_date_reads_the_date_of_any_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"Date": "Mon, 07 Dec 2026 21:00:05 GMT"})

    with RegistryClient(REF, transport=httpx.MockTransport(handler)) as client:
        assert client.server_date() == datetime(2026, 12, 7, 21, 0, 5, tzinfo=UTC)

    with RegistryClient(REF, transport=httpx.MockTransport(lambda request: httpx.Response(200))) as client:
        assert client.server_date() is None
