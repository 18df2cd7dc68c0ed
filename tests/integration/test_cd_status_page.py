"""The CD status page: every app, one app with its deploys and logs, the badge, JSON or HTML by ``Accept``,
over the real listener (a free loopback port) and real state files, and in headless Chromium."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cd_agent.apps import AppPaths, Targets, app_target
from cd_agent.listener import Listener, ListenerConfig
from cd_agent.settings import CdAgentSettings, CdSettings
from cd_agent.state import DeployState, Release
from cd_agent.state_readers import StateReaders
from cd_agent.status_pages import StatusPages
from shared.runstore import RunStore
from shared.settings import load_settings
from tests.integration.test_dashboard import browse

HOSTILE = "<script>alert(1)</script>"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


class NoHints:
    def hint(self, repositories: object) -> list[str]:
        return []


@pytest.fixture
def targets(tmp_path: Path) -> Targets:
    environ = {"STATE_DIR": str(tmp_path / "state"), "LOG_DIR": str(tmp_path / "logs")}
    agent = load_settings(CdAgentSettings, environ)
    apps = []
    for name in ("web", "idle"):
        settings = load_settings(CdSettings, {**environ, "CD_IMAGE": f"127.0.0.1:5000/owner/{name}",
                                              "CD_CONTAINER_NAME": name})
        apps.append(app_target(settings, name, AppPaths.of_app(agent, name)))
    web = apps[0]
    web.paths.log_dir.mkdir(parents=True)
    with DeployState(web.paths.state) as state:
        state.record_deployed(
            Release("1.2.0", "sha256:" + "b" * 64, "c2", datetime(2026, 12, 7, 10, 0, tzinfo=UTC)),
            Release("1.1.0", "sha256:" + "a" * 64, "c1", datetime(2026, 12, 6, 10, 0, tzinfo=UTC)),
        )
        state.quarantine("1.3.0", f"health check failed: {HOSTILE}")
        state.set_last_poll_at(datetime(2026, 12, 7, 11, 0, tzinfo=UTC))
        state.set_last_error(f"registry unreachable: {HOSTILE}")
    with RunStore(web.paths.runs) as runs:
        for version, status, error in (("1.2.0", "succeeded", None), ("1.3.0", "failed", f"unhealthy {HOSTILE}")):
            run = runs.create(kind="deploy", status="running")
            log = web.paths.log_dir / f"2026-12-07_10-00-00_run-{run.number:04d}.log"
            log.write_text(f"deploying {version}\n\x1b[31m{HOSTILE}\x1b[0m\n")
            runs.update(run.number, status=status, version=version, error=error, log_path=str(log),
                        started_at=datetime(2026, 12, 7, 10, 0, tzinfo=UTC),
                        finished_at=datetime(2026, 12, 7, 10, 1, tzinfo=UTC))
    return Targets(agent, tuple(apps))


@pytest.fixture
def served(targets: Targets) -> Iterator[str]:
    readers = StateReaders()
    listener = Listener(ListenerConfig("127.0.0.1", 0), NoHints(), StatusPages(lambda: targets, readers))
    listener.start()
    yield f"http://127.0.0.1:{listener.port}"
    listener.stop()
    readers.close()


def test_every_app_as_json_for_api_clients(served: str) -> None:
    answer = httpx.get(served + "/")
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["vary"] == "Accept" and answer.headers["cache-control"] == "no-store"
    apps = {item["app"]: item for item in answer.json()["apps"]}
    web, idle = apps["web"], apps["idle"]
    assert web["current"]["version"] == "1.2.0" and web["previous"]["version"] == "1.1.0"
    assert web["quarantined"][0]["version"] == "1.3.0"
    assert web["last_poll"]["outcome"] == "failed"
    assert web["deploys"][0]["version"] == "1.3.0" and web["deploys"][0]["log_url"] == "/apps/web/runs/2/log"
    assert idle["current"] is None and idle["last_poll"] is None and idle["deploys"] == []


def test_one_app_its_deploys_and_their_logs(served: str, targets: Targets) -> None:
    web = httpx.get(served + "/apps/web").json()
    assert [run["status"] for run in web["deploys"]] == ["failed", "succeeded"]
    log = httpx.get(served + web["deploys"][0]["log_url"])
    assert log.status_code == 200 and log.headers["content-type"].startswith("text/plain")
    assert log.text == f"deploying 1.3.0\n{HOSTILE}\n"  # colours stripped, served as text: inert
    assert httpx.get(served + "/apps/web/runs/99/log").status_code == 404
    assert httpx.get(served + "/apps/nobody").status_code == 404
    assert httpx.get(served + "/apps/web/runs/1/../../log").status_code == 404
    assert not targets.apps[1].paths.state.exists()  # reading created nothing


def test_html_for_browsers_escapes_every_value(served: str) -> None:
    page = httpx.get(served + "/", headers={"Accept": BROWSER})
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["vary"] == "Accept" and "default-src 'none'" in page.headers["content-security-policy"]
    assert HOSTILE not in page.text and "&lt;script&gt;" in page.text
    one = httpx.get(served + "/apps/web", headers={"Accept": BROWSER}).text
    assert one.count('<tr class="deploy">') == 2 and HOSTILE not in one


def test_the_badge_says_the_deployed_version(served: str) -> None:
    badge = httpx.get(served + "/badge/web.svg")
    assert badge.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(badge.text)  # noqa: S314 - the agent's own answer in a test
    texts = [element.text for element in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "1.2.0" in texts and "deployed" in texts
    assert "nothing" in httpx.get(served + "/badge/idle.svg").text
    assert httpx.get(served + "/badge/nobody.svg").status_code == 404


def test_headless_chromium_shows_the_apps(served: str, tmp_path: Path) -> None:
    dom = browse(f"{served}/", tmp_path / "profile", "--dump-dom").stdout
    assert dom.count('<section class="app">') == 2
    assert 'href="/apps/web"' in dom and "1.2.0" in dom and "1.1.0" in dom
    assert "<script>" not in dom and "&lt;script&gt;" in dom
    dom = browse(f"{served}/apps/web", tmp_path / "profile", "--dump-dom").stdout
    assert dom.count('<tr class="deploy">') == 2 and 'href="/apps/web/runs/2/log"' in dom
