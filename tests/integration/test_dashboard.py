"""The dashboard: the run list, a run's page, the badge and content negotiation, in-process
(TestClient over a real RunStore) and in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import html
import shutil
import subprocess
import threading
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn

from ci_agent.dashboard import create_dashboard_app
from ci_agent.settings import CiSettings
from shared.runstore import Run, RunStore
from tests.integration.test_webhook import SECRET, make_settings
from tests.support.polling import wait_for
from tests.support.ports import free_port

with warnings.catch_warnings():
    # Starlette's TestClient warns when it finds httpx instead of httpx2; it works the same.
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

HOSTILE = "<script>alert('x')</script>"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def sha() -> str:
    return (uuid.uuid4().hex + uuid.uuid4().hex)[:40]


class Runs:
    """Runs recorded straight into the store, as the worker would leave them."""

    def __init__(self, store: RunStore, log_dir: Path) -> None:
        self.store = store
        self.log_dir = log_dir

    def add(
        self, status: str, *, ref: str = "refs/heads/main", version: str | None = None,
        failed_step: str | None = None, error: str | None = None, message: str = "fix: a change",
        log: str | None = None, minutes: float = 2.5,
    ) -> Run:
        commit = sha()
        event = {"ref": ref, "after": commit, "head_message": message}
        run = self.store.create(kind="ci", status="queued", commit=commit, ref=ref, details={"event": event})
        if status == "queued":
            return run
        started = T0 + timedelta(hours=run.number)
        fields: dict[str, object] = {"status": status, "started_at": started}
        if log is not None:
            path = self.log_dir / f"run-{run.number}.log"
            path.write_text(log)
            fields["log_path"] = str(path)
        if status != "running":
            fields |= {"finished_at": started + timedelta(minutes=minutes), "version": version,
                       "failed_step": failed_step, "error": error}
        return self.store.update(run.number, **fields)


@pytest.fixture
def store(tmp_path) -> Iterator[RunStore]:
    with RunStore(tmp_path / "state" / "runs.db") as store:
        yield store


@pytest.fixture
def settings(tmp_path) -> CiSettings:
    return make_settings(
        tmp_path, CI_REPO_URL="https://deploy-user:repo-token-Qz9@github.com/Codertocat/Hello-World.git",
        CI_GITHUB_REPO="<unset>",
    )


@pytest.fixture
def runs(store, tmp_path) -> Runs:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    return Runs(store, log_dir)


@pytest.fixture
def client(settings, store) -> TestClient:
    # The dashboard answers only to loopback names without a token (TestClient says "testserver").
    return TestClient(create_dashboard_app(settings, store), base_url="http://127.0.0.1")


def page(client: TestClient, path: str, accept: str = BROWSER_ACCEPT) -> httpx.Response:
    response: httpx.Response = client.get(path, headers={"Accept": accept})
    for secret in (SECRET, "repo-token-Qz9", "deploy-user"):
        assert secret not in response.text
    return response


def test_empty_list_says_there_are_no_runs_and_shows_what_is_tracked(client):
    response = page(client, "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "No runs yet" in response.text
    assert "github.com/Codertocat/Hello-World.git" in response.text  # credentials stripped
    assert "<code>main</code>" in response.text
    assert "127.0.0.1:5000/codertocat/hello-world" in response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_list_shows_runs_newest_first_with_their_fields(client, runs):
    first = runs.add("succeeded", version="0.1.0", minutes=2.5)
    second = runs.add("failed", failed_step="test", error="2 tests failed", minutes=0.25)
    third = runs.add("running")
    text = page(client, "/").text
    rows = [text.index(f'href="/runs/{run.number}"') for run in (third, second, first)]
    assert rows == sorted(rows)
    assert first.commit is not None and first.commit[:12] in text
    assert first.commit not in text  # short sha only
    assert '<span class="status succeeded">succeeded</span>' in text
    assert '<span class="status failed">failed</span>' in text
    assert "0.1.0" in text and "2m 30s" in text and "15s" in text and ">test<" in text
    assert "2025-03-01 13:00:00 UTC" in text
    assert "fix: a change" in text
    assert 'http-equiv="refresh"' in text


def test_hostile_stored_values_are_escaped_everywhere(client, runs):
    run = runs.add(
        "failed", ref=f"refs/heads/{HOSTILE}", failed_step=HOSTILE, error=f"boom {HOSTILE}",
        message=f"feat: {HOSTILE}", log=f"step 1\n{HOSTILE}\n\x1b[31mred\x1b[0m done\n",
    )
    for path in ("/", f"/runs/{run.number}"):
        text = page(client, path).text
        assert "<script>" not in text
        assert html.escape(HOSTILE) in text
    text = page(client, f"/runs/{run.number}").text
    assert "red done" in text and "\x1b" not in text  # colour codes stripped from the page


def test_run_page_shows_fields_log_and_links(client, runs):
    run = runs.add("failed", failed_step="build", error="no space left", log="checkout ok\nbuild: no space\n")
    response = page(client, f"/runs/{run.number}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    text = response.text
    assert f"run #{run.number}" in text
    assert "<pre>checkout ok\nbuild: no space\n</pre>" in text
    assert 'href="/"' in text and f'href="/runs/{run.number}/log"' in text
    assert "no space left" in text and ">build<" in text and run.commit in text
    assert 'http-equiv="refresh"' not in text  # finished: nothing to wait for
    assert client.get(f"/runs/{run.number}/log").text == "checkout ok\nbuild: no space\n"


def test_run_page_of_a_running_run_reloads_and_a_pruned_log_is_explained(client, runs):
    running = runs.add("running", log="step 1\n")
    assert 'http-equiv="refresh"' in page(client, f"/runs/{running.number}").text
    pruned = runs.add("succeeded", version="0.1.0", log="gone soon\n")
    assert pruned.log_path is not None
    Path(pruned.log_path).unlink()
    text = page(client, f"/runs/{pruned.number}").text
    assert "log was pruned" in text and "gone soon" not in text


def test_long_log_page_shows_the_end_and_points_to_the_raw_log(client, runs):
    lines = [f"line {i:06d}" for i in range(40_000)]
    run = runs.add("succeeded", version="0.1.0", log="\n".join(lines) + "\n")
    text = page(client, f"/runs/{run.number}").text
    assert "line 039999" in text and "line 000000" not in text
    assert "only in the raw log" in text


@pytest.mark.parametrize(
    ("accept", "html_page"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("application/json, text/html", False),  # a tie keeps JSON
        ("text/html;q=0.5, application/json", False),
        ("text/*, application/json;q=0.5", True),
        ("text/html", True),
        (BROWSER_ACCEPT, True),
        ("text/html;q=oops, */*", False),
    ],
)
def test_run_json_stays_the_default_and_html_is_for_browsers(client, runs, accept, html_page):
    run = runs.add("succeeded", version="0.1.0")
    headers = {} if accept is None else {"Accept": accept}
    response = client.get(f"/runs/{run.number}", headers=headers)
    assert response.status_code == 200
    if html_page:
        assert response.headers["content-type"].startswith("text/html")
        assert f"run #{run.number}" in response.text
    else:
        assert response.headers["content-type"] == "application/json"
        assert response.json() == run.to_json(scope_key="repo")


def test_unknown_run_is_404_for_browsers_too(client):
    response = page(client, "/runs/999")
    assert response.status_code == 404
    assert response.json() == {"error": "run 999 not found"}


def badge(client: TestClient) -> tuple[httpx.Response, list[str]]:
    response = client.get("/badge.svg")
    root = ET.fromstring(response.text)  # noqa: S314 - the agent's own answer in a test
    texts = [element.text or "" for element in root.iter("{http://www.w3.org/2000/svg}text")]
    return response, texts[1::2]


def test_badge_follows_the_last_finished_run_of_the_tracked_branch(client, runs):
    response, texts = badge(client)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.headers["cache-control"] == "no-cache"
    assert texts == ["ci", "unknown"]
    runs.add("running")
    assert badge(client)[1] == ["ci", "running"]
    runs.add("succeeded", version="0.1.0")
    assert badge(client)[1] == ["ci", "passing", "0.1.0"]
    runs.add("failed", failed_step="test")
    runs.add("succeeded", ref="refs/heads/feature", version="0.2.0")
    runs.add("queued")
    assert badge(client)[1] == ["ci", "failing", "0.2.0"]


# -- a real browser ---------------------------------------------------------------------------------


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed: `apt-get install -y chromium` (the dashboard test loads the pages in it)")


@pytest.fixture
def served(settings, store) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, in a thread."""
    port = free_port()
    config = uvicorn.Config(create_dashboard_app(settings, store), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=15, what="uvicorn to serve the dashboard")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def browse(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", *extra, url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-2000:]}"
    return result


def test_headless_chromium_shows_the_runs(served, runs, tmp_path):
    passed = runs.add("succeeded", version="0.1.0", message="feat: first release", log="all good\n")
    failed = runs.add("failed", failed_step="test", error=f"tests failed {HOSTILE}", message=f"fix: {HOSTILE}")
    dom = browse(f"{served}/", tmp_path / "profile", "--dump-dom").stdout
    assert "<table>" in dom
    assert dom.count('<tr class="run">') == 2
    assert f'href="/runs/{failed.number}"' in dom and f'href="/runs/{passed.number}"' in dom
    assert "feat: first release" in dom and "0.1.0" in dom
    assert "<script>" not in dom and "&lt;script&gt;" in dom  # the hostile message stays text

    dom = browse(f"{served}/runs/{passed.number}", tmp_path / "profile", "--dump-dom").stdout
    assert f"run #{passed.number}" in dom and "<pre>all good\n</pre>" in dom

    screenshot = tmp_path / "dashboard.png"
    browse(f"{served}/", tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,600",
           "--hide-scrollbars")
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_metrics_parse_with_prometheus_own_parser(client, runs):
    from prometheus_client.parser import text_string_to_metric_families

    runs.add("succeeded", version="0.1.0", minutes=0.5)
    runs.add("failed", failed_step="test", minutes=3)
    runs.add("running")
    runs.add("queued")
    runs.add("queued")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert response.headers["cache-control"] == "no-store"
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text) for sample in family.samples
    }
    assert samples[("picicd_ci_runs_total", (("status", "succeeded"),))] == 1
    assert samples[("picicd_ci_runs_total", (("status", "failed"),))] == 1
    assert samples[("picicd_ci_runs_total", (("status", "interrupted"),))] == 0
    assert samples[("picicd_ci_run_duration_seconds_count", ())] == 2
    assert samples[("picicd_ci_run_duration_seconds_sum", ())] == 210
    assert samples[("picicd_ci_run_duration_seconds_bucket", (("le", "10.0"),))] == 0
    assert samples[("picicd_ci_run_duration_seconds_bucket", (("le", "30.0"),))] == 1
    assert samples[("picicd_ci_run_duration_seconds_bucket", (("le", "60.0"),))] == 1
    assert samples[("picicd_ci_run_duration_seconds_bucket", (("le", "300.0"),))] == 2
    assert samples[("picicd_ci_queue_length", ())] == 2 and samples[("picicd_ci_running", ())] == 1


def test_metrics_need_the_dashboard_token(tmp_path, store):
    locked = make_settings(tmp_path, CI_DASHBOARD_TOKEN="a-dashboard-token-of-some-length")
    with TestClient(create_dashboard_app(locked, store)) as locked_client:
        assert locked_client.get("/metrics").status_code == 401
        answer = locked_client.get("/metrics", headers={"Authorization": "Bearer a-dashboard-token-of-some-length"})
        assert answer.status_code == 200
