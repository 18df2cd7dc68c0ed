"""Many repositories in one ci-agent, in-process: one webhook, secrets per repository or shared, runs,
badges and the run filter per repository, the fair queue and the reload; over a real RunStore."""

from __future__ import annotations

import json
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ci_agent.agent import open_agent
from ci_agent.dashboard import create_dashboard_app
from ci_agent.payload import PushEvent
from ci_agent.queue import RunQueue
from ci_agent.repos import LiveTargets
from ci_agent.settings import CiSettings
from ci_agent.signature import sign
from ci_agent.targets import RepoTargets, load_targets
from ci_agent.webhook import create_app
from shared.runstore import RunStore
from shared.settings import load_settings
from shared.testing import capture_logs
from tests.support.payloads import GITHUB_PAYLOADS as PAYLOADS

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

WEB_SECRET = "whsec-web-Aa1-never-echoed"
ORG_SECRET = "whsec-org-Bb2-never-echoed"
SECRETS = (WEB_SECRET, ORG_SECRET)

REPOS = f"""
[repos.web]
repo_url = "https://github.com/me/web.git"
github_repo = "me/web"
image = "127.0.0.1:5000/me/web"
webhook_secret = "{WEB_SECRET}"

[repos.api]
repo_url = "https://github.com/org/api.git"
github_repo = "org/api"
image = "127.0.0.1:5000/org/api"
webhook_secret = "{ORG_SECRET}"

[repos.docs]
repo_url = "https://github.com/org/docs.git"
github_repo = "org/docs"
image = "127.0.0.1:5000/org/docs"
webhook_secret = "{ORG_SECRET}"
branch = "trunk"
"""


def write_repos(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def environment(tmp_path: Path) -> dict[str, str]:
    return {
        "CI_REPOS_FILE": str(write_repos(tmp_path / "repos.toml", REPOS)),
        "LOG_DIR": str(tmp_path / "logs"),
        "STATE_DIR": str(tmp_path / "state"),
    }


def push(full_name: str, ref: str = "refs/heads/main", after: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / "push_with-new-branch.payload.json").read_text())
    data["ref"] = ref
    data["after"] = after or uuid.uuid4().hex + uuid.uuid4().hex[:8]
    data["repository"]["full_name"] = full_name
    return data


class Api:
    def __init__(self, app: TestClient, dashboard: TestClient, store: RunStore, live: LiveTargets) -> None:
        self.app = app
        self.dashboard = dashboard
        self.store = store
        self.live = live

    def deliver(self, body: dict[str, Any], secret: str, delivery: str | None = None) -> httpx.Response:
        raw = json.dumps(body).encode()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(SecretStr(secret), raw),
        }
        return self.checked(self.app.post("/webhook", content=raw, headers=headers))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.checked(self.dashboard.get(path, **kwargs))

    @staticmethod
    def checked(response: httpx.Response) -> httpx.Response:
        for secret in SECRETS:
            assert secret not in response.text
        return response


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    env = environment(tmp_path)
    settings = load_settings(CiSettings, env)
    live = LiveTargets(load_targets(settings, env))
    with RunStore(tmp_path / "state" / "runs.sqlite3") as store:
        queue = RunQueue(store)
        yield Api(
            TestClient(create_app(settings, store, queue, live)),
            TestClient(create_dashboard_app(settings, store, live), base_url="http://127.0.0.1"),
            store,
            live,
        )


def test_each_repository_is_picked_by_its_name_among_those_of_the_secret(api):
    web = api.deliver(push("me/web"), WEB_SECRET)
    org_api = api.deliver(push("org/api"), ORG_SECRET)
    docs = api.deliver(push("org/docs", "refs/heads/trunk"), ORG_SECRET)
    assert (web.status_code, org_api.status_code, docs.status_code) == (202, 202, 202)
    assert [api.store.get(r.json()["run"]).scope for r in (web, org_api, docs)] == ["web", "api", "docs"]
    # Names compare as GitHub does: case-insensitively.
    assert api.deliver(push("Org/API"), ORG_SECRET).status_code == 202
    # Each repository keeps its own branch filter.
    ignored = api.deliver(push("org/docs", "refs/heads/main"), ORG_SECRET)
    assert ignored.status_code == 200
    assert ignored.json() == {"ignored": "branch 'main' is not the tracked branch 'trunk'"}


def test_a_delivery_signed_with_one_repositorys_secret_naming_another_is_refused(api):
    with capture_logs() as logs:
        forged = api.deliver(push("me/web"), ORG_SECRET)
        assert forged.status_code == 403
        assert "not configured with the secret this delivery was signed with" in forged.json()["error"]
        also = api.deliver(push("org/api"), WEB_SECRET)
        assert also.status_code == 403
    assert api.store.list() == []
    warned = [entry.message for entry in logs if entry.level == "WARNING"]
    assert any("refused a delivery for repository 'me/web' ([repos.web])" in line for line in warned), warned
    for entry in logs:
        for secret in SECRETS:
            assert secret not in entry.message


def test_an_unconfigured_repository_gets_the_another_repository_answer(api):
    answer = api.deliver(push("someone/else"), ORG_SECRET)
    assert answer.status_code == 403
    assert answer.json() == {"error": "repository 'someone/else' is not one of this agent's repositories"}


def test_a_signature_under_no_configured_secret_is_401(api):
    answer = api.deliver(push("me/web"), "some-other-secret")
    assert answer.status_code == 401
    assert "any configured secret" in answer.json()["error"]
    assert api.store.list() == []


def test_duplicate_delivery_ids_still_count_once(api):
    delivery = str(uuid.uuid4())
    body = push("org/api")
    first = api.deliver(body, ORG_SECRET, delivery)
    again = api.deliver(body, ORG_SECRET, delivery)
    assert first.status_code == 202
    assert (again.status_code, again.json()) == (200, {"duplicate": True, "run": first.json()["run"]})


def test_same_commit_and_branch_in_two_repositories_do_not_coalesce(api):
    sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    one = api.deliver(push("org/api", after=sha), ORG_SECRET).json()["run"]
    two = api.deliver(push("me/web", after=sha), WEB_SECRET).json()["run"]
    assert [api.store.get(n).status for n in (one, two)] == ["queued", "queued"]


def test_runs_filter_by_repository_and_carry_it(api):
    api.deliver(push("me/web"), WEB_SECRET)
    api.deliver(push("org/api"), ORG_SECRET)
    api.deliver(push("me/web"), WEB_SECRET)
    everything = api.get("/runs").json()
    assert [run["repo"] for run in everything] == ["web", "api", "web"]
    assert [run["repo"] for run in api.get("/runs", params={"repo": "web"}).json()] == ["web", "web"]
    assert api.get("/runs", params={"repo": "nothing"}).json() == []
    number = everything[1]["number"]
    assert api.get(f"/runs/{number}").json()["repo"] == "api"
    page = api.get("/", params={"repo": "api"}, headers={"Accept": "text/html"}).text
    assert "runs of api" in page
    assert page.count('<tr class="run">') == 1
    assert 'href="/?repo=docs"' in api.get("/").text


def test_each_repository_has_its_badge_and_the_single_badge_points_there(api):
    number = api.deliver(push("me/web"), WEB_SECRET).json()["run"]
    api.store.update(number, status="succeeded", version="0.3.0")
    web = api.get("/badge/web.svg")
    assert web.status_code == 200
    assert "passing" in web.text and "0.3.0" in web.text
    docs = api.get("/badge/docs.svg")
    assert "unknown" in docs.text and "0.3.0" not in docs.text
    assert api.get("/badge/nope.svg").status_code == 404
    single = api.get("/badge.svg")
    assert single.status_code == 404
    assert "/badge/NAME.svg" in single.json()["error"]
    public = api.checked(api.app.get("/badge/web.svg"))
    assert public.status_code == 200


def test_a_reload_applies_to_the_next_delivery(api, tmp_path):
    new_secret = "whsec-new-Cc3-never-echoed"
    text = REPOS.replace(f'webhook_secret = "{WEB_SECRET}"', f'webhook_secret = "{new_secret}"')
    env = {**environment(tmp_path), "CI_REPOS_FILE": str(write_repos(tmp_path / "next.toml", text))}
    api.live.replace(load_targets(load_settings(CiSettings, env), env))
    assert api.deliver(push("me/web"), WEB_SECRET).status_code == 401
    assert api.deliver(push("me/web"), new_secret).status_code == 202


# -- the queue ---------------------------------------------------------------------------------------


def event(sha: str | None = None, ref: str = "refs/heads/main") -> PushEvent:
    return PushEvent(ref=ref, branch=ref.removeprefix("refs/heads/"), tag=None,
                     after=sha or uuid.uuid4().hex + uuid.uuid4().hex[:8], before="0" * 40, deleted=False,
                     repository="me/x", pusher="octocat")


def test_a_burst_to_one_repository_delays_anothers_next_run_by_at_most_one_run(tmp_path):
    with RunStore(tmp_path / "runs.db") as store:
        queue = RunQueue(store)
        burst = [queue.submit(event(), scope="a").number for _ in range(20)]
        other = queue.submit(event(), scope="b").number
        late = queue.submit(event(), scope="c").number
        order = []
        for _ in range(22):
            run, _event = queue.take(timeout=1) or (None, None)
            assert run is not None
            order.append(run.number)
            store.update(run.number, status="succeeded")
            queue.done()
        # a (in progress when the others arrived), then b and c before the rest of the burst.
        assert order[:3] == [burst[0], other, late]
        assert order[3:] == burst[1:]


def test_round_robin_between_two_busy_repositories(tmp_path):
    with RunStore(tmp_path / "runs.db") as store:
        queue = RunQueue(store)
        a = [queue.submit(event(), scope="a").number for _ in range(3)]
        b = [queue.submit(event(), scope="b").number for _ in range(3)]
        order = []
        while (taken := queue.take(timeout=0.1)) is not None:
            order.append(taken[0].number)
            store.update(taken[0].number, status="succeeded")
        assert order == [a[0], b[0], a[1], b[1], a[2], b[2]]


def test_parallel_runs_never_take_two_runs_of_one_repository(tmp_path):
    with RunStore(tmp_path / "runs.db") as store:
        queue = RunQueue(store)
        a1, a2 = (queue.submit(event(), scope="a").number for _ in range(2))
        b1 = queue.submit(event(), scope="b").number
        first, second = queue.take(timeout=1), queue.take(timeout=1)
        assert first is not None and second is not None
        assert {first[0].number, second[0].number} == {a1, b1}
        assert queue.take(timeout=0.05) is None  # a2 waits for a1
        results: list[Any] = []
        waiter = threading.Thread(target=lambda: results.append(queue.take(timeout=30)))
        waiter.start()
        store.update(a1, status="succeeded")
        queue.done()
        waiter.join(30)
        assert results and results[0] is not None and results[0][0].number == a2


# -- the agent: reload -------------------------------------------------------------------------------


def test_a_bad_file_at_reload_keeps_the_running_configuration(tmp_path):
    env = environment(tmp_path)
    settings = load_settings(CiSettings, env)
    targets = load_targets(settings, env)
    with open_agent(settings, targets, env) as agent, capture_logs() as logs:
        write_repos(Path(env["CI_REPOS_FILE"]), REPOS + "\n[repos.bad]\nimage = 3\n")
        assert agent.reload() is False
        assert agent.targets.current is targets
        errors = [entry.message for entry in logs if entry.level == "ERROR"]
        assert len(errors) == 1
        assert errors[0].startswith("reload refused, the repositories stay as they were: CI_REPOS_FILE=")
        write_repos(Path(env["CI_REPOS_FILE"]), REPOS.split("[repos.docs]")[0])
        assert agent.reload() is True
        assert agent.targets.current.names == ["web", "api"]


def test_each_repository_pipeline_gets_its_own_platforms_and_build_engine_and_a_reload_rebuilds_it(tmp_path):
    env = environment(tmp_path)
    with_keys = REPOS.replace('branch = "trunk"\n', 'branch = "trunk"\nplatforms = ["linux/amd64", "linux/arm64"]\n'
                              'build_docker_host = "unix:///run/buildbox.sock"\nbuild_fallback_local = true\n')
    write_repos(Path(env["CI_REPOS_FILE"]), with_keys)
    settings = load_settings(CiSettings, env)
    with open_agent(settings, load_targets(settings, env), env) as agent:
        web, docs = agent.targets.current.get("web"), agent.targets.current.get("docs")
        assert web is not None and docs is not None
        docs_pipeline, web_pipeline = agent.runs.get(docs), agent.runs.get(web)
        # docs releases for both platforms and builds on its own engine; web as without the keys.
        assert docs_pipeline.platforms is not None
        assert [str(p) for p in docs_pipeline.platforms.platforms] == ["linux/amd64", "linux/arm64"]
        gateway = docs_pipeline.docker
        assert (gateway._build_host, gateway._fallback_local) == ("unix:///run/buildbox.sock", True)  # type: ignore[attr-defined]
        assert gateway._host_setting == "[repos.docs] build_docker_host"  # type: ignore[attr-defined]
        assert web_pipeline.platforms is None
        assert (web_pipeline.docker._build_host, web_pipeline.docker._fallback_local) == (None, False)  # type: ignore[attr-defined]
        # A reload that drops the keys gives docs's next run a pipeline without them.
        write_repos(Path(env["CI_REPOS_FILE"]), REPOS)
        assert agent.reload() is True
        reloaded = agent.targets.current.get("docs")
        assert reloaded is not None and reloaded.platforms == () and reloaded.build_host is None
        assert agent.runs.get(reloaded).platforms is None
        assert agent.runs.get(web) is web_pipeline  # an unchanged repository keeps its pipeline


def test_the_one_repository_of_the_environment_is_not_reloaded(tmp_path):
    env = {"CI_REPO_URL": "https://github.com/me/web.git", "CI_IMAGE": "me/web", "CI_ALLOW_UNSIGNED": "true",
           "LOG_DIR": str(tmp_path / "logs"), "STATE_DIR": str(tmp_path / "state")}
    settings = load_settings(CiSettings, env)
    targets: RepoTargets = load_targets(settings, env)
    with open_agent(settings, targets, env) as agent:
        assert agent.reload() is False
        assert agent.targets.current is targets


def test_a_small_body_is_signed_only_until_a_secret_matches(tmp_path):
    import asyncio

    from ci_agent.body import BodyIntake

    raw = json.dumps(push("me/web")).encode()
    keys = [SecretStr(f"secret-number-{index}") for index in range(10)]

    async def chunks() -> Any:
        yield raw

    body = asyncio.run(BodyIntake(tmp_path / "spool").read(chunks(), len(raw), keys))
    assert body.matching(sign(keys[7], raw), first=7) == 7
    assert sum(signature is not None for signature in body._signatures) == 1  # one HMAC, not ten
    assert body.matching(sign(keys[3], raw)) == 3
    assert body.matching(sign(SecretStr("nobody's"), raw)) is None
    assert all(signature is not None for signature in body._signatures)  # a forgery is compared with all


def test_the_hook_id_hint_is_only_a_hint(api):
    body = push("org/api")
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Hook-ID": "77"}
    for secret, expected in ((ORG_SECRET, 202), (WEB_SECRET, 403), ("wrong", 401), (ORG_SECRET, 202)):
        signature = sign(SecretStr(secret), raw)
        signed = {**headers, "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": signature}
        assert api.checked(api.app.post("/webhook", content=raw, headers=signed)).status_code == expected


def test_each_repository_with_a_poll_interval_gets_its_poller_and_reloads_follow(tmp_path):
    env = environment(tmp_path)
    text = REPOS.replace("https://github.com/org/api.git", (tmp_path / "no-such-api.git").as_uri())
    text = text.replace('webhook_secret = "' + ORG_SECRET + '"\n\n[repos.docs]',
                        'webhook_secret = "' + ORG_SECRET + '"\npoll_interval = 60\n\n[repos.docs]')
    write_repos(Path(env["CI_REPOS_FILE"]), text)
    settings = load_settings(CiSettings, env)
    with open_agent(settings, load_targets(settings, env), env) as agent:
        agent.start_pollers()
        assert sorted(agent.pollers._running) == ["api"]
        poller = agent.pollers._running["api"][1]
        assert poller.name == "api"
        assert poller.seen.path == tmp_path / "state" / "repos" / "api" / "poll-refs.json"
        write_repos(Path(env["CI_REPOS_FILE"]), REPOS)
        assert agent.reload() is True
        assert agent.pollers._running == {}
