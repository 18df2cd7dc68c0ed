"""The CI agent's HTTP API in-process (TestClient) over a real RunStore in tmp_path."""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from pydantic import SecretStr

from ci_agent.dashboard import create_dashboard_app
from ci_agent.queue import RunQueue
from ci_agent.settings import CiSettings
from ci_agent.signature import sign
from ci_agent.webhook import MAX_BODY_BYTES, create_app
from shared.runstore import RunStore
from shared.settings import load_settings
from tests.support.payloads import GITHUB_PAYLOADS as PAYLOADS

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2 behind its TestClient and warns (an error under our pytest
    # settings) when it finds httpx; the TestClient works the same with either.
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

SECRET = "webhook-secret-Xy7-never-echoed"
REPO = "Codertocat/Hello-World"


def payload(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return data


def branch_push(ref: str = "refs/heads/main", after: str | None = None) -> dict[str, Any]:
    data = payload("push_with-new-branch.payload.json")
    data["ref"] = ref
    data["after"] = after or uuid.uuid4().hex + uuid.uuid4().hex[:8]
    return data


class Api:
    """A TestClient that signs what it sends and checks that no answer ever carries the secret."""

    def __init__(self, client: TestClient, store: RunStore, dashboard: TestClient) -> None:
        self.client = client
        self.store = store
        self.dashboard = dashboard

    def deliver(
        self,
        body: bytes | dict[str, Any] | list[Any],
        *,
        event: str = "push",
        delivery: str | None = None,
        signature: str | None = "sign",
        content_type: str = "application/json",
        extra_headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {
            "Content-Type": content_type,
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            **(extra_headers or {}),
        }
        if signature == "sign":
            headers["X-Hub-Signature-256"] = sign(_secret(), raw)
        elif signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return self.checked(self.client.post("/webhook", content=raw, headers=headers))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """A GET on the public listener's app (the webhook port)."""
        return self.checked(self.client.get(path, **kwargs))

    def private_get(self, path: str, **kwargs: Any) -> httpx.Response:
        """A GET on the dashboard listener's app (loopback by default)."""
        return self.checked(self.dashboard.get(path, **kwargs))

    @staticmethod
    def checked(response: httpx.Response) -> httpx.Response:
        assert SECRET not in response.text
        assert all(SECRET not in value for value in response.headers.values())
        return response


def _secret() -> SecretStr:
    return SecretStr(SECRET)


def make_settings(tmp_path: Path, **overrides: str) -> CiSettings:
    environ = {
        "CI_REPO_URL": "https://github.com/Codertocat/Hello-World.git",
        "CI_IMAGE": "127.0.0.1:5000/codertocat/hello-world",
        "CI_WEBHOOK_SECRET": SECRET,
        "CI_GITHUB_REPO": REPO,
        "LOG_DIR": str(tmp_path / "logs"),
        "STATE_DIR": str(tmp_path / "state"),
        **overrides,
    }
    return load_settings(CiSettings, {key: value for key, value in environ.items() if value != "<unset>"})


@pytest.fixture
def store(tmp_path) -> Iterator[RunStore]:
    with RunStore(tmp_path / "state" / "runs.db") as store:
        yield store


def make_api(settings: CiSettings, store: RunStore) -> Api:
    queue = RunQueue(store)
    return Api(
        TestClient(create_app(settings, store, queue)), store,
        # The dashboard answers only to loopback names without a token (TestClient says "testserver").
        TestClient(create_dashboard_app(settings, store), base_url="http://127.0.0.1"),
    )


@pytest.fixture
def api(tmp_path, store) -> Api:
    return make_api(make_settings(tmp_path), store)


def test_signed_push_to_the_tracked_branch_is_queued(api, store):
    data = branch_push()
    delivery = str(uuid.uuid4())
    response = api.deliver(data, delivery=delivery)
    assert response.status_code == 202
    number = response.json()["run"]
    run = store.get(number)
    assert run is not None
    assert run.status == "queued"
    assert run.commit == data["after"]
    assert run.ref == "refs/heads/main"
    assert run.delivery_id == delivery


@pytest.mark.parametrize(
    ("signature", "extra_headers"),
    [
        (None, None),
        ("sha256=" + "0" * 64, None),
        ("sha256=", None),
        ("garbage", None),
        (None, {"X-Hub-Signature": "sha1=" + "0" * 40}),
    ],
)
def test_missing_or_wrong_signature_is_401_and_nothing_queued(api, store, signature, extra_headers):
    response = api.deliver(branch_push(), signature=signature, extra_headers=extra_headers)
    assert response.status_code == 401
    assert "X-Hub-Signature-256" in response.json()["error"]
    assert store.list() == []


def test_signature_over_another_body_is_refused(api, store):
    body = json.dumps(branch_push()).encode()
    response = api.deliver(body + b" ", signature=sign(_secret(), body))
    assert response.status_code == 401
    assert store.list() == []


def test_signature_with_another_secret_is_refused(api, store):
    body = json.dumps(branch_push()).encode()
    response = api.deliver(body, signature=sign(SecretStr("not-the-secret"), body))
    assert response.status_code == 401
    assert store.list() == []


def test_signature_is_checked_before_anything_else(api):
    assert api.deliver(payload("ping_payload.json"), event="ping", signature=None).status_code == 401
    assert api.deliver(b"not json", signature="sha256=" + "1" * 64).status_code == 401


@pytest.mark.parametrize("body", [b"not json", b"{\"ref\": ", "{}".encode("utf-16"), b"\xff\xfe"])
def test_not_json_is_400(api, store, body):
    response = api.deliver(body)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]
    assert store.list() == []


@pytest.mark.parametrize("body", [[], {"zen": "not a push"}, {"ref": "refs/heads/main"}])
def test_json_that_is_not_a_push_is_400(api, store, body):
    response = api.deliver(body)
    assert response.status_code == 400
    assert store.list() == []


def test_body_over_25_mib_is_413(api, store):
    response = api.deliver(b"x" * (26 * 1024 * 1024))
    assert response.status_code == 413
    assert store.list() == []


def test_streamed_body_over_25_mib_without_length_is_413(api, store):
    chunk = b"x" * (1024 * 1024)

    def chunks() -> Iterator[bytes]:
        for _ in range(26):
            yield chunk

    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64}
    response = api.checked(api.client.post("/webhook", content=chunks(), headers=headers))
    assert "content-length" not in {key.lower() for key in response.request.headers}
    assert response.status_code == 413
    assert store.list() == []


def test_body_of_exactly_the_cap_is_read(api, store):
    # At the cap: not 413; the signature decides (here it is wrong, so 401).
    assert api.deliver(b" " * MAX_BODY_BYTES, signature="sha256=" + "0" * 64).status_code == 401


def test_githubs_tag_deletion_push_is_ignored(tmp_path, store):
    api = make_api(make_settings(tmp_path, CI_GITHUB_REPO="<unset>"), store)
    response = api.deliver(payload("push_payload.json"))
    assert response.status_code == 200
    assert "deleted" in response.json()["ignored"]
    assert store.list() == []


def test_branch_deletion_is_ignored(api, store):
    data = branch_push(after="0" * 40)
    data["deleted"] = True
    response = api.deliver(data)
    assert response.status_code == 200
    assert "ignored" in response.json()
    assert store.list() == []


@pytest.mark.parametrize("name", ["ping_payload.json", "ping_with-app_id.payload.json"])
def test_ping_is_200(api, store, name):
    response = api.deliver(payload(name), event="ping")
    assert response.status_code == 200
    assert store.list() == []


def test_other_events_are_ignored(api, store):
    response = api.deliver({"action": "opened"}, event="issues")
    assert response.status_code == 200
    assert "issues" in response.json()["ignored"]
    assert store.list() == []


def test_missing_event_header_is_400(api, store):
    body = json.dumps(branch_push()).encode()
    headers = {"X-Hub-Signature-256": sign(_secret(), body), "Content-Type": "application/json"}
    response = api.checked(api.client.post("/webhook", content=body, headers=headers))
    assert response.status_code == 400
    assert store.list() == []


def test_push_to_another_branch_is_ignored(api, store):
    response = api.deliver(branch_push("refs/heads/develop"))
    assert response.status_code == 200
    assert "develop" in response.json()["ignored"]
    assert store.list() == []


def test_tracked_branch_comes_from_settings(tmp_path, store):
    api = make_api(make_settings(tmp_path, CI_BRANCH="master"), store)
    response = api.deliver(payload("push_with-new-branch.payload.json"))
    assert response.status_code == 202
    assert store.get(response.json()["run"]).commit == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


def test_release_tag_push_is_queued(api, store):
    response = api.deliver(branch_push("refs/tags/v1.4.0"))
    assert response.status_code == 202
    run = store.get(response.json()["run"])
    assert run.ref == "refs/tags/v1.4.0"
    assert run.details["event"]["tag"] == "v1.4.0"


@pytest.mark.parametrize("tag", ["nightly", "1.4.0", "v1.4", "v1.4.0-rc.1"])
def test_other_tag_pushes_are_ignored(api, store, tag):
    response = api.deliver(branch_push(f"refs/tags/{tag}"))
    assert response.status_code == 200
    assert tag in response.json()["ignored"]
    assert store.list() == []


def test_same_delivery_twice_is_one_run(api, store):
    delivery = str(uuid.uuid4())
    data = branch_push()
    first = api.deliver(data, delivery=delivery)
    second = api.deliver(data, delivery=delivery)
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json() == {"duplicate": True, "run": first.json()["run"]}
    assert len(store.list()) == 1


def test_redelivery_of_a_failed_run_queues_a_retry(api, store):
    delivery = str(uuid.uuid4())
    data = branch_push()
    first = api.deliver(data, delivery=delivery).json()["run"]
    store.update(first, status="failed")
    retry = api.deliver(data, delivery=delivery)
    assert retry.status_code == 202
    assert retry.json()["run"] != first
    assert store.get(retry.json()["run"]).commit == data["after"]


def test_five_pushes_of_a_commit_leave_only_the_newest_queued(api, store):
    data = branch_push()
    numbers = [api.deliver(data).json()["run"] for _ in range(5)]
    statuses = {number: store.get(number).status for number in numbers}
    assert statuses[numbers[-1]] == "queued"
    assert [statuses[number] for number in numbers[:-1]] == ["superseded"] * 4


@pytest.mark.parametrize(
    "ref",
    ["refs/heads/--upload-pack=touch x", "refs/heads/-main", "refs/heads/main;id", "refs/heads/a..b",
     "refs/tags/--help", "refs/heads/$(touch x)"],
)
def test_crafted_ref_is_400_and_nothing_queued(tmp_path, store, ref):
    api = make_api(make_settings(tmp_path, CI_BRANCH="main"), store)
    response = api.deliver(branch_push(ref))
    assert response.status_code == 400
    assert "ref" in response.json()["error"]
    assert store.list() == []


def test_another_repository_is_refused(api, store):
    data = branch_push()
    data["repository"]["full_name"] = "mallory/Hello-World"
    response = api.deliver(data)
    assert response.status_code == 403
    assert "mallory/Hello-World" in response.json()["error"]
    assert store.list() == []


def test_repository_name_compares_case_insensitively(api, store):
    data = branch_push()
    data["repository"]["full_name"] = REPO.lower()
    assert api.deliver(data).status_code == 202


def test_form_encoded_delivery_is_accepted(api, store):
    data = branch_push()
    body = urlencode({"payload": json.dumps(data)}).encode()
    response = api.deliver(body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 202
    assert store.get(response.json()["run"]).commit == data["after"]


def test_form_encoded_delivery_without_payload_is_400(api, store):
    body = urlencode({"other": "x"}).encode()
    response = api.deliver(body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert store.list() == []


def test_unsigned_deliveries_when_allowed(tmp_path, store):
    api = make_api(make_settings(tmp_path, CI_WEBHOOK_SECRET="<unset>", CI_ALLOW_UNSIGNED="true"), store)
    assert api.deliver(branch_push(), signature=None).status_code == 202


def test_a_configured_secret_is_checked_even_when_unsigned_is_allowed(tmp_path, store):
    api = make_api(make_settings(tmp_path, CI_ALLOW_UNSIGNED="true"), store)
    assert api.deliver(branch_push(), signature=None).status_code == 401


def test_healthz(api):
    response = api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_runs_newest_first_with_limit(api):
    numbers = [api.deliver(branch_push(f"refs/heads/{name}")).json().get("run") for name in ("main",)]
    numbers += [api.deliver(branch_push("refs/tags/v0.0." + str(i))).json()["run"] for i in range(1, 4)]
    response = api.private_get("/runs")
    assert response.status_code == 200
    assert [run["number"] for run in response.json()] == sorted(numbers, reverse=True)
    limited = api.private_get("/runs?limit=2").json()
    assert [run["number"] for run in limited] == sorted(numbers, reverse=True)[:2]
    assert api.private_get("/runs?limit=0").status_code == 422


def test_one_run_as_json(api):
    data = branch_push()
    number = api.deliver(data).json()["run"]
    response = api.private_get(f"/runs/{number}")
    assert response.status_code == 200
    run = response.json()
    assert run["number"] == number
    assert run["status"] == "queued"
    assert run["commit"] == data["after"]
    assert run["ref"] == "refs/heads/main"
    for key in ("version", "failed_step", "started_at", "finished_at", "log_path"):
        assert run[key] is None


def test_unknown_run_is_404_json(api):
    response = api.private_get("/runs/999")
    assert response.status_code == 404
    assert "999" in response.json()["error"]
    assert api.private_get("/runs/999/log").status_code == 404


def test_run_log_as_text(api, store, tmp_path):
    number = api.deliver(branch_push()).json()["run"]
    assert api.private_get(f"/runs/{number}/log").status_code == 404
    log = tmp_path / "logs" / "2024-01-01_00-00-00_run-0001.log"
    log.parent.mkdir(parents=True)
    log.write_text("checkout ok\ntest ok\n")
    store.update(number, log_path=str(log))
    response = api.private_get(f"/runs/{number}/log")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.text == "checkout ok\ntest ok\n"
    log.unlink()
    assert api.private_get(f"/runs/{number}/log").status_code == 404


def test_only_the_designed_routes_exist(api):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert api.get(path).status_code == 404
    assert api.checked(api.client.get("/webhook")).status_code == 405


# -- what each listener serves (issue 8.2) ----------------------------------------------------------

TOKEN = "dashboard-token-Qm4-never-echoed"
PRIVATE_PATHS = ("/", "/runs", "/runs/1", "/runs/1/log")


def test_the_public_app_serves_no_run_data_without_a_token(api):
    api.deliver(branch_push())
    for path in PRIVATE_PATHS:
        response = api.get(path, headers={"Accept": "text/html"})
        assert response.status_code == 404, path
        assert "commit" not in response.text
    assert api.get("/healthz").status_code == 200
    assert api.get("/badge.svg").status_code == 200


def test_the_dashboard_app_serves_run_data_without_a_token(api):
    api.deliver(branch_push())
    for path in ("/", "/runs", "/runs/1"):
        assert api.private_get(path).status_code == 200, path
    assert api.private_get("/healthz").status_code == 200
    assert api.private_get("/badge.svg").status_code == 200


def _basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("listener", ["public", "dashboard"])
def test_with_a_token_every_listener_asks_for_it(tmp_path, store, listener):
    api = make_api(make_settings(tmp_path, CI_DASHBOARD_TOKEN=TOKEN), store)
    api.deliver(branch_push())
    get = api.get if listener == "public" else api.private_get
    for path in PRIVATE_PATHS:
        refused = get(path)
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"].startswith("Basic realm=")
        assert TOKEN not in refused.text
        for wrong in ("Bearer " + TOKEN[:-1] + "x", _basic("me", "nope"), "Token " + TOKEN, "Bearer", "Basic !!"):
            assert get(path, headers={"Authorization": wrong}).status_code == 401, (path, wrong)
    for good in ("Bearer " + TOKEN, _basic("anyone", TOKEN), _basic("", TOKEN)):
        assert get("/runs", headers={"Authorization": good}).status_code == 200, good
        assert get("/", headers={"Authorization": good}).status_code == 200, good
    # Still anonymous: what GitHub and a README need.
    assert get("/healthz").status_code == 200
    assert get("/badge.svg").status_code == 200


@pytest.mark.parametrize("token", ["short", " sixteen-or-more-chars", "sixteen-or-more\tchars"])
def test_an_unusable_dashboard_token_is_refused_at_start_up(tmp_path, token):
    from shared.errors import SettingsError

    with pytest.raises(SettingsError, match="CI_DASHBOARD_TOKEN") as caught:
        make_settings(tmp_path, CI_DASHBOARD_TOKEN=token)
    assert token.strip() not in str(caught.value)


def test_the_dashboard_port_must_differ_from_the_webhook_port(tmp_path):
    from shared.errors import SettingsError

    with pytest.raises(SettingsError, match="CI_DASHBOARD_PORT"):
        make_settings(tmp_path, CI_PORT="8100", CI_DASHBOARD_PORT="8100")


# -- bad input that used to answer 500 (issue 8.5) --------------------------------------------------


def test_deeply_nested_json_is_400(api, store):
    depth = 100_000
    response = api.deliver(b"[" * depth + b"]" * depth)
    assert response.status_code == 400
    assert "nested" in response.json()["error"]
    assert store.list() == []


@pytest.mark.parametrize("number", ["9223372036854775808", "99999999999999999999999", "0", "-1"])
def test_run_numbers_out_of_range_are_404(api, number):
    assert api.private_get(f"/runs/{number}").status_code == 404
    assert api.private_get(f"/runs/{number}/log").status_code == 404


def test_one_run_varies_on_accept(api):
    number = api.deliver(branch_push()).json()["run"]
    as_json = api.private_get(f"/runs/{number}")
    as_html = api.private_get(f"/runs/{number}", headers={"Accept": "text/html"})
    assert as_json.headers["content-type"].startswith("application/json")
    assert as_html.headers["content-type"].startswith("text/html")
    assert as_json.headers["vary"] == as_html.headers["vary"] == "Accept"


# -- bodies larger than the in-memory limit (issue 8.3) ---------------------------------------------


def test_a_large_signed_push_is_spooled_and_accepted(api, store, tmp_path):
    from ci_agent.body import SPOOL_MEMORY_BYTES

    raw = json.dumps(branch_push()).encode() + b" " * (SPOOL_MEMORY_BYTES * 3)
    response = api.deliver(raw)
    assert response.status_code == 202
    assert len(store.list()) == 1
    spool = tmp_path / "state" / "spool"
    assert spool.stat().st_mode & 0o777 == 0o700
    assert list(spool.iterdir()) == []  # an unnamed temporary file: nothing is left behind


def test_a_large_chunked_signed_push_is_accepted(api, store):
    raw = json.dumps(branch_push()).encode() + b" " * (2 * 1024 * 1024)
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "chunked-1", "X-Hub-Signature-256": sign(_secret(), raw)}

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 100_000):
            yield raw[start : start + 100_000]

    response = api.checked(api.client.post("/webhook", content=chunks(), headers=headers))
    assert response.status_code == 202


def test_a_large_body_with_a_wrong_signature_is_401_and_leaves_no_file(api, store, tmp_path):
    response = api.deliver(b"x" * (3 * 1024 * 1024), signature="sha256=" + "0" * 64)
    assert response.status_code == 401
    assert store.list() == []
    spool = tmp_path / "state" / "spool"
    assert not spool.exists() or list(spool.iterdir()) == []


def test_no_signature_header_is_401_whatever_the_body(api, store):
    def chunks() -> Iterator[bytes]:
        for _ in range(26):
            yield b"x" * (1024 * 1024)

    headers = {"X-GitHub-Event": "push"}
    response = api.checked(api.client.post("/webhook", content=chunks(), headers=headers))
    assert response.status_code == 401
    assert store.list() == []


def test_large_bodies_beyond_the_slots_are_503(tmp_path):
    import asyncio

    from ci_agent.body import BodiesBusy, BodyIntake

    async def scenario() -> tuple[int, bytes]:
        intake = BodyIntake(tmp_path / "spool", slots=1)
        gate = asyncio.Event()

        async def slow() -> Any:
            yield b"x" * 100_000
            await gate.wait()
            yield b"y"

        async def instant() -> Any:
            yield b"z" * 100_000

        first = asyncio.create_task(intake.read(slow(), None, None))
        while not intake._semaphore.locked():
            await asyncio.sleep(0)
        with pytest.raises(BodiesBusy) as busy:
            await intake.read(instant(), None, None)
        gate.set()
        body = await (await first).content()
        return busy.value.status_code, body

    status, body = asyncio.run(scenario())
    assert status == 503
    assert body == b"x" * 100_000 + b"y"
