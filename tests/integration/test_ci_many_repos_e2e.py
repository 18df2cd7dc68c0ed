"""Three repositories from one ``ci-agent serve`` (a real process): real git, dockerd and registry.

``web`` has a webhook secret of its own, ``api`` and ``docs`` share an organisation secret. Each push
releases its own image; a delivery signed with the organisation secret that names ``web`` is refused;
logs, badges, the runs filter and commit statuses are per repository; a burst of pushes to one
repository does not hold another repository's run back by more than the run in progress.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.ci_agent_server import gated_test_script, registry_tags
from tests.support.github_api import GitHubApi
from tests.support.many_repos import ORG_SECRET, Repo, StartMany

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TOKEN = "ghp_many_repos_Tk5_never_shown"


@pytest.fixture
def github(secret: Callable[[str], str]) -> Iterator[GitHubApi]:
    server = GitHubApi("me/web", secret(TOKEN)).start()
    yield server
    server.stop()


def test_three_repositories_release_their_own_images_with_their_own_logs_badges_and_statuses(
    make_repo: Callable[..., Repo], start_many: StartMany, github: GitHubApi, tmp_path: Path
) -> None:
    web = make_repo("web", "me/web", "whsec-own-web-Q7k2-never-shown", github_token=TOKEN)
    api = make_repo("api", "org/api", ORG_SECRET)
    docs = make_repo("docs", "org/docs", ORG_SECRET)
    agent = start_many([web, api, docs], CI_GITHUB_API_URL=github.url)

    numbers = {repo.name: agent.push(repo, f"fix: first release of {repo.name}") for repo in (web, api, docs)}
    runs = {name: agent.wait_finished(number) for name, number in numbers.items()}
    for repo in (web, api, docs):
        run = runs[repo.name]
        assert (run["status"], run["version"], run["repo"]) == ("succeeded", "0.1.0", repo.name), run
        assert registry_tags(repo.image) == ["0.1.0", "latest"]
        # LOG_DIR/NAME/YYYY-MM-DD_HH-MM-SS_run-NNNN.log, and only this run's lines in it.
        path = Path(run["log_path"])
        assert path.parent == tmp_path / "logs" / repo.name
        assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d_run-{run['number']:04d}\.log", path.name)
        log = path.read_text()
        assert f"run {run['number']} started" in log
        for other in numbers.values():
            if other != run["number"]:
                assert f"run {other} " not in log

    # The filter and the badges.
    assert [run["repo"] for run in agent.runs_of("api")] == ["api"]
    assert {run["repo"] for run in agent.runs()} == {"web", "api", "docs"}
    badge = agent.get("/badge/docs.svg")
    assert badge.status_code == 200 and "passing" in badge.text and "0.1.0" in badge.text
    assert agent.get("/badge.svg").status_code == 404

    # Commit statuses: web has a github_token, the others none; only web's commits are reported.
    web_sha = runs["web"]["commit"]
    agent.process.wait_until(lambda: [state for state, _ in github.states(web_sha)][-1:] == ["success"],
                             what="web's success status")
    assert {r.sha for r in github.created()} == {web_sha}

    # A second release of one repository moves only its own version.
    again = agent.wait_finished(agent.push(api, "feat: a page"))
    assert (again["status"], again["version"]) == ("succeeded", "0.2.0"), again
    assert registry_tags(web.image) == ["0.1.0", "latest"]
    assert registry_tags(api.image) == ["0.1.0", "0.2.0", "latest"]


def test_a_delivery_signed_with_the_organisation_secret_naming_web_is_refused(
    three_repos: list[Repo], start_many: StartMany
) -> None:
    web, api, _docs = three_repos
    agent = start_many(three_repos)
    sha = web.project.head()
    forged = agent.deliver_for(web, web.payload(sha, "forged"), secret=ORG_SECRET)
    assert forged.status_code == 403, forged.text
    assert agent.runs() == []
    agent.process.wait_until(lambda: "refused a delivery for repository 'me/web'" in agent.process.output,
                             what="the forgery logged")
    assert ORG_SECRET not in agent.process.output


def test_a_burst_to_one_repository_holds_another_back_by_one_run_at_most(
    three_repos: list[Repo], start_many: StartMany, tmp_path: Path
) -> None:
    web, api, _docs = three_repos
    agent = start_many(three_repos)
    gate = tmp_path / "gate"
    first = agent.push(web, "held", test_script=gated_test_script(gate))
    agent.wait_status(first, "running")
    # A burst to web (tags, so nothing coalesces), then one push to api.
    burst = []
    for n in range(5):
        sha = web.project.commit({"www/n.html": f"{n}\n"}, f"release {n}")
        web.project.tag(f"v1.0.{n}")
        answer = agent.deliver_for(web, {**web.payload(sha, f"release {n}"), "ref": f"refs/tags/v1.0.{n}"})
        assert answer.status_code == 202, answer.text
        burst.append(answer.json()["run"])
    other = agent.push(api, "fix: api")
    gate.write_text("open")
    finished = [agent.wait_finished(number, timeout=180) for number in (first, other, *burst)]
    started = sorted(finished, key=lambda run: run["started_at"])
    assert [run["number"] for run in started][:2] == [first, other], started
    assert finished[1]["status"] == "succeeded", (finished[1], agent.log_of(other)[-3000:])

