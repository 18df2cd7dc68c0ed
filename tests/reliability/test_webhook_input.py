"""Webhook and input: hostile, malformed and concurrent deliveries.

The in-process tests drive the real FastAPI app (TestClient) over a real RunStore in tmp_path; the
concurrency and commit-message tests drive ``ci-agent serve`` as a real process with real git,
dockerd and registry.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from ci_agent.dashboard import create_dashboard_app
from ci_agent.queue import RunQueue
from ci_agent.settings import CiSettings
from ci_agent.signature import sign
from ci_agent.webhook import create_app
from shared.runstore import RunStore
from shared.settings import load_settings
from tests.support.ci_agent_server import (
    WEBHOOK_SECRET,
    StartAgent,
    gated_test_script,
    launch_ci_agent,
    push_payload,
    registry_tags,
)
from tests.support.docker_env import DockerJanitor, unique
from tests.support.git_repos import GitProject, make_git_project
from tests.support.ports import free_port
from tests.support.registry_server import RegistryServer
from tests.support.reliability import register_produced, register_secret

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

REPO = "Codertocat/Hello-World"
SHA = "a" * 40
ALLOWED = {200, 202, 400, 401, 403, 413}
_FORM = "application/x-www-form-urlencoded"


def make_app(tmp_path: Path) -> tuple[TestClient, RunStore]:
    environ = {
        "CI_REPO_URL": "https://github.com/Codertocat/Hello-World.git",
        "CI_IMAGE": "127.0.0.1:5000/codertocat/hello-world",
        "CI_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "CI_GITHUB_REPO": REPO,
        "LOG_DIR": str(tmp_path / "logs"),
        "STATE_DIR": str(tmp_path / "state"),
    }
    ci_settings = load_settings(CiSettings, environ)
    store = RunStore(tmp_path / "state" / "runs.sqlite3")
    # raise_server_exceptions=False: a 500 must show up as an answer we can count, not as a test error.
    app = create_app(ci_settings, store, RunQueue(store))
    # The run API lives on the dashboard listener; one client reaches both here.
    app.mount("/", create_dashboard_app(ci_settings, store))
    # base_url: without a token the dashboard answers only to loopback names (TestClient says "testserver").
    client = TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1")
    return client, store


@pytest.fixture
def app(tmp_path: Path, secret: Callable[[str], str]) -> Iterator[tuple[TestClient, RunStore]]:
    secret(WEBHOOK_SECRET)
    client, store = make_app(tmp_path)
    with client:
        yield client, store
    store.close()


def push(ref: str = "refs/heads/main", message: str = "fix: x", after: str = SHA) -> dict[str, Any]:
    return {
        "ref": ref,
        "after": after,
        "before": "0" * 40,
        "deleted": False,
        "repository": {"full_name": REPO},
        "head_commit": {"id": after, "message": message},
        "commits": [{"id": after, "message": message}],
        "pusher": {"name": "someone"},
    }


def post(
    client: TestClient,
    body: bytes,
    *,
    signed: bool = True,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {"Content-Type": content_type, "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4())}
    if signed:
        sent["X-Hub-Signature-256"] = sign(SecretStr(WEBHOOK_SECRET), body)
    sent.update(headers or {})
    answer: httpx.Response = client.post("/webhook", content=body, headers=sent)
    return answer


# -- fuzzing -----------------------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
hostile_text = st.sampled_from(
    ["main", "refs/heads/main", "$(touch /tmp/x)", "`id`", "-x", "--upload-pack=x", "a\nb", "\x00", "ä", "a b", ""]
) | st.text(max_size=30)
ref_value = st.one_of(
    st.builds(lambda name: f"refs/heads/{name}", hostile_text),
    st.builds(lambda name: f"refs/tags/{name}", hostile_text),
    hostile_text,
    json_value,
)
sha_value = st.sampled_from([SHA, "0" * 40, "A" * 40, "g" * 40, "a" * 39, ""]) | json_value


@st.composite
def push_like(draw: st.DrawFn) -> dict[str, Any]:
    """A push payload with any of its fields replaced by something hostile, missing or mistyped."""
    data: dict[str, Any] = push()
    data["ref"] = draw(ref_value)
    data["after"] = draw(sha_value)
    for key in draw(st.sets(st.sampled_from(sorted(data)), max_size=3)):
        if draw(st.booleans()):
            del data[key]
        else:
            data[key] = draw(json_value)
    return data


header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@pytest.mark.reliability(
    "hypothesis: 200 push-like payloads, signed or not, hostile refs/shas/fields and headers",
    "every answer is 2xx, 400, 401, 403 (another repository) or 413, never 500; nothing queued unless signed and valid",
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=push_like(),
    signed=st.booleans(),
    content_type=st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain", ""]),
    event=st.sampled_from(["push", "ping", "issues", ""]) | header_value,
    delivery=header_value,
    signature=st.none() | header_value,
)
def test_fuzzed_push_payloads_and_headers(
    app: tuple[TestClient, RunStore],
    observed: Callable[[str], None],
    data: dict[str, Any],
    signed: bool,
    content_type: str,
    event: str,
    delivery: str,
    signature: str | None,
) -> None:
    client, store = app
    raw = json.dumps(data).encode()
    body = urlencode({"payload": raw.decode()}).encode() if content_type.endswith("urlencoded") else raw
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery}
    if not signed:
        headers["X-Hub-Signature-256"] = signature or ""
    before = len(store.list(limit=10_000))
    answer = post(client, body, signed=signed, content_type=content_type, headers=headers)
    after = len(store.list(limit=10_000))
    assert answer.status_code in ALLOWED, (answer.status_code, answer.text)
    assert answer.headers["content-type"].startswith("application/json")
    if answer.status_code != 202:
        assert after == before, f"{answer.status_code} answer but a run was queued"
    else:
        assert signed and after == before + 1
    _FUZZ_STATS.setdefault(answer.status_code, 0)
    _FUZZ_STATS[answer.status_code] += 1
    observed_fuzz(observed)


_FUZZ_STATS: dict[int, int] = {}
_FUZZ_OBSERVED: list[Callable[[str], None]] = []


def observed_fuzz(observed: Callable[[str], None]) -> None:
    # Hypothesis calls the test many times with the same fixture: remember it, report once at the end.
    if not _FUZZ_OBSERVED:
        _FUZZ_OBSERVED.append(observed)


@pytest.fixture(autouse=True)
def _report_fuzz_stats() -> Iterator[None]:
    _FUZZ_STATS.clear()
    _FUZZ_OBSERVED.clear()
    yield
    if _FUZZ_OBSERVED and _FUZZ_STATS:
        counts = ", ".join(f"{count}× {status}" for status, count in sorted(_FUZZ_STATS.items()))
        _FUZZ_OBSERVED[0](f"{sum(_FUZZ_STATS.values())} examples answered {counts}; no 500")


@pytest.mark.reliability(
    "hypothesis: 200 arbitrary byte bodies with a valid signature",
    "400 (or 2xx for what happens to be a valid push), never 500; nothing queued from a malformed body",
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), content_type=st.sampled_from(["application/json", _FORM]))
def test_fuzzed_raw_bodies(
    app: tuple[TestClient, RunStore], observed: Callable[[str], None], body: bytes, content_type: str
) -> None:
    client, store = app
    answer = post(client, body, content_type=content_type)
    assert answer.status_code in ALLOWED - {202}, (answer.status_code, answer.text)
    assert store.list() == []
    _FUZZ_STATS.setdefault(answer.status_code, 0)
    _FUZZ_STATS[answer.status_code] += 1
    observed_fuzz(observed)


# -- GitHub's delivery formats and signatures ----------------------------------------------------------


@pytest.mark.reliability(
    "GitHub form-encoded delivery (application/x-www-form-urlencoded, payload=<JSON>), signed over the form body",
    "handled like JSON: 202 and one queued run for the pushed commit",
)
def test_form_encoded_delivery_is_handled(app: tuple[TestClient, RunStore], observed: Callable[[str], None]) -> None:
    client, store = app
    body = urlencode({"payload": json.dumps(push())}).encode()
    answer = post(client, body, content_type=_FORM)
    assert answer.status_code == 202, answer.text
    [run] = store.list()
    assert (run.status, run.commit) == ("queued", SHA)
    broken = post(client, b"payload=%7Bnot-json", content_type=_FORM)
    assert broken.status_code == 400
    assert len(store.list()) == 1
    observed(f"202, run {run.number} queued for {SHA[:7]}; a form whose payload is not JSON: 400 {broken.json()}")


@pytest.mark.reliability(
    "a valid signature of one body sent with another body (one byte appended, or the form vs. JSON encoding)",
    "401, nothing queued",
)
def test_signature_over_another_body_is_401(app: tuple[TestClient, RunStore], observed: Callable[[str], None]) -> None:
    client, store = app
    raw = json.dumps(push()).encode()
    statuses = []
    for sent in (raw + b" ", urlencode({"payload": raw.decode()}).encode()):
        answer = post(client, sent, signed=False, headers={"X-Hub-Signature-256": sign(SecretStr(WEBHOOK_SECRET), raw)})
        statuses.append(answer.status_code)
    assert statuses == [401, 401]
    assert store.list() == []
    observed(f"answers {statuses}; 0 runs queued")


@pytest.mark.reliability(
    "only GitHub's legacy SHA-1 signature (X-Hub-Signature: sha1=..., correct for the body)",
    "401 saying only X-Hub-Signature-256 is accepted, nothing queued",
)
def test_sha1_only_signature_is_401(app: tuple[TestClient, RunStore], observed: Callable[[str], None]) -> None:
    import hashlib
    import hmac

    client, store = app
    raw = json.dumps(push()).encode()
    sha1 = "sha1=" + hmac.new(WEBHOOK_SECRET.encode(), raw, hashlib.sha1).hexdigest()
    answer = post(client, raw, signed=False, headers={"X-Hub-Signature": sha1})
    assert answer.status_code == 401
    assert "X-Hub-Signature-256" in answer.json()["error"]
    assert store.list() == []
    observed(f"401 {answer.json()['error']!r}")


HOSTILE_REFS = [
    "refs/heads/--upload-pack=touch /tmp/pwned",
    "refs/heads/-x",
    "refs/heads/main;touch x",
    "refs/heads/$(touch x)",
    "refs/heads/`touch x`",
    "refs/heads/a|b",
    "refs/heads/a&&b",
    "refs/heads/a\nb",
    "refs/heads/a b",
    "refs/heads/feature/../../etc",
    "refs/heads/.hidden",
    "refs/tags/--force",
    "refs/tags/v1.0.0;rm -rf ~",
    "refs/tags/v1.0.0\n",
    "refs/heads/main\x00",
    "--upload-pack=touch x",
    "-",
]


@pytest.mark.reliability(
    "hostile refs: shell metacharacters, option-like '-' prefixes, newlines, NUL, '..', and non-UTF-8 bytes",
    "400 with the reason, before anything is queued (so nothing reaches git or a shell)",
)
def test_hostile_ref_names_are_400(app: tuple[TestClient, RunStore], observed: Callable[[str], None]) -> None:
    client, store = app
    statuses = {ref: post(client, json.dumps(push(ref=ref)).encode()).status_code for ref in HOSTILE_REFS}
    # Not UTF-8 at all: the JSON text itself carries a raw 0xff byte inside the ref.
    raw = json.dumps(push(ref="refs/heads/XX")).encode().replace(b"XX", b"\xff\xfe")
    statuses["refs/heads/<0xff 0xfe>"] = post(client, raw).status_code
    # A lone surrogate via a JSON escape: valid JSON, not a valid name.
    statuses["refs/heads/<U+D800>"] = post(client, json.dumps(push(ref="refs/heads/\ud800")).encode()).status_code
    assert set(statuses.values()) == {400}, statuses
    assert store.list() == []
    observed(f"{len(statuses)} hostile refs, all 400; 0 runs queued")


@pytest.mark.reliability(
    "commit messages with $(...), backticks, ;, newlines and option-like text, in-process",
    "accepted as data (202), stored unchanged",
)
def test_hostile_commit_messages_are_data(app: tuple[TestClient, RunStore], observed: Callable[[str], None]) -> None:
    client, store = app
    message = "feat: $(touch x) `touch y`; rm -rf ~ | cat\n--upload-pack=evil\n\x00 ä end"
    answer = post(client, json.dumps(push(message=message)).encode())
    assert answer.status_code == 202, answer.text
    [run] = store.list()
    assert run.details["event"]["head_message"] == message
    assert client.get(f"/runs/{run.number}").status_code == 200
    observed("202; the message is stored character for character and the run reads back as JSON")


@pytest.mark.reliability(
    "a commit message carrying a lone surrogate as a JSON escape (\\ud800), i.e. not valid Unicode",
    "400 and nothing queued (stored, it made GET /runs and GET /runs/N answer 500 for good: fixed)",
)
def test_lone_surrogate_in_a_commit_message_is_400(
    app: tuple[TestClient, RunStore], observed: Callable[[str], None]
) -> None:
    client, store = app
    answer = post(client, json.dumps(push(message="fix: \ud800")).encode())
    assert answer.status_code == 400, answer.text
    assert store.list() == []
    assert client.get("/runs").status_code == 200
    observed(f"400 {answer.json()['error']!r}; 0 runs queued")


# -- a real agent process --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hundred:
    """What 100 concurrent deliveries to a real agent produced."""

    latencies: list[float]
    statuses: list[int]
    numbers: set[int]
    runs: list[dict[str, Any]]
    tags: list[str]


@pytest.fixture(scope="module")
def hundred(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    registry: RegistryServer,
    docker_client: Any,
) -> Iterator[Hundred]:
    """100 signed deliveries at once while a gated run holds the worker; done once for two rows."""
    register_secret(request.config, WEBHOOK_SECRET)
    root = tmp_path_factory.mktemp("hundred")
    gate = root / "gate"
    project = make_git_project(root)
    image = f"{registry.host}/{unique('rel-hundred')}/app"
    janitor = DockerJanitor(docker_client, images={f"{image}:{tag}" for tag in ("latest", "0.1.0", "0.1.1")})
    agent = launch_ci_agent(
        root, project, image, free_port(), CI_TEST_RUNNER="host", CI_TEST_COMMAND="sh tests/run.sh"
    )
    try:
        first_sha = project.commit_sample("first", test_script=gated_test_script(gate))
        first = agent.deliver(push_payload(project, first_sha, "first")).json()["run"]
        # Inside its tests, past the replay checks: the hundred pushes queue behind it, not supersede it.
        agent.process.wait_until(lambda: "step test started" in agent.log_of(first), what="run 1 in its tests")
        sha = project.commit({"tests/run.sh": "#!/bin/sh\necho ok\n"}, "fix: the hundredth push")
        project.push()
        body = json.dumps(push_payload(project, sha, "fix: the hundredth push")).encode()

        start = threading.Barrier(100)
        with httpx.Client(limits=httpx.Limits(max_connections=100), timeout=30) as client:

            def deliver(_: int) -> tuple[float, int, int]:
                headers = agent.headers(body, str(uuid.uuid4()))
                start.wait()
                began = time.monotonic()
                answer = client.post(f"{agent.url}/webhook", content=body, headers=headers)
                elapsed = time.monotonic() - began
                agent.answers.append(answer.text)
                return elapsed, answer.status_code, int(answer.json().get("run", 0))

            with ThreadPoolExecutor(max_workers=100) as pool:
                results = list(pool.map(deliver, range(100)))
        gate.touch()
        agent.wait_finished(first)
        runs = agent.wait_all_finished(expected=101)
        yield Hundred(
            latencies=sorted(elapsed for elapsed, _, _ in results),
            statuses=[status for _, status, _ in results],
            numbers={number for _, _, number in results},
            runs=runs,
            tags=registry_tags(image),
        )
    finally:
        agent.process.stop()
        for answer in agent.answers:
            register_produced(request.config, f"answer of {agent.url}", answer)
        janitor.cleanup()


@pytest.mark.docker
@pytest.mark.reliability(
    "100 signed deliveries at once to a real `ci-agent serve` (uvicorn) while a gated run holds the worker",
    "all answered 202 (within GitHub's 10 s); all 100 runs in the history; coalesced to one run; versions unique",
)
def test_a_hundred_concurrent_deliveries(hundred: Hundred, observed: Callable[[str], None]) -> None:
    by_number = {run["number"]: run for run in hundred.runs}
    statuses = [by_number[number]["status"] for number in hundred.numbers if number in by_number]
    versions = sorted(run["version"] for run in hundred.runs if run["version"])
    observed(
        f"{hundred.statuses.count(202)} answered 202, slowest {hundred.latencies[-1]:.2f}s; {len(hundred.runs)} runs "
        f"in the history; {statuses.count('succeeded')} succeeded, {statuses.count('superseded')} superseded; "
        f"versions {versions}, registry tags {hundred.tags}"
    )
    assert hundred.statuses == [202] * 100
    assert len(hundred.numbers) == 100
    assert hundred.numbers <= set(by_number), "a delivery's run is missing from the history"
    assert hundred.latencies[-1] < 10.0
    assert statuses.count("succeeded") == 1 and statuses.count("superseded") == 99
    assert versions == ["0.1.0", "0.1.1"]
    assert hundred.tags == ["0.1.0", "0.1.1", "latest"]


@pytest.mark.docker
@pytest.mark.reliability(
    "the same 100 concurrent deliveries: latency of the slowest answer",
    "every delivery answered within 1 s",
)
def test_a_hundred_concurrent_deliveries_within_a_second(hundred: Hundred, observed: Callable[[str], None]) -> None:
    latencies = hundred.latencies
    observed(f"median {latencies[49]:.2f}s, 90th percentile {latencies[89]:.2f}s, slowest {latencies[-1]:.2f}s")
    assert latencies[-1] < 1.0


@pytest.mark.docker
@pytest.mark.reliability(
    "a real run (test in a container, build, push) of a commit whose message holds $(touch M1), `touch M2`, "
    "; touch M3 and newlines",
    "the run succeeds and none of the marker files exists (nothing reached a shell)",
)
def test_hostile_commit_message_through_a_real_run(
    start_ci_agent: StartAgent, git_project: GitProject, tmp_path: Path, observed: Callable[[str], None]
) -> None:
    markers = [tmp_path / f"marker-{index}" for index in range(3)]
    message = f"fix: $(touch {markers[0]}) `touch {markers[1]}`; touch {markers[2]}\n\n--upload-pack=evil ä"
    agent = start_ci_agent()
    sha = git_project.commit_sample(message)
    answer = agent.deliver(push_payload(git_project, sha, message))
    assert answer.status_code == 202, answer.text
    run = agent.wait_finished(answer.json()["run"])
    assert run["status"] == "succeeded", run
    assert [marker.exists() for marker in markers] == [False, False, False]
    observed(f"run {run['number']} succeeded (version {run['version']}); 0 of 3 marker files exist")
