"""Reliability of one ci-agent serving several repositories (CI_REPOS_FILE): crashes, bad files, forgeries.

Real processes, real git and the real registry; runs use the host test runner, and a run that must
stay in progress waits for a gate file.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.ci_agent_server import gated_test_script, registry_tags
from tests.support.many_repos import ORG_SECRET, OWN_SECRET, Repo, StartMany, write_repos_file
from tests.support.ports import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.mark.reliability(
    "three repositories; the agent SIGKILLed while web's run is in its test step and api's and docs' runs "
    "are queued behind it; then restarted",
    "web's run is interrupted, never left running; api's and docs' queued runs run after the restart and release "
    "0.1.0 to their own images",
)
def test_killed_mid_run_with_two_repositories_queued(
    three_repos: list[Repo], start_many: StartMany, tmp_path: Path, observed: Callable[[str], None]
) -> None:
    web, api, docs = three_repos
    agent = start_many(three_repos)
    stuck = agent.push(web, "held", test_script=gated_test_script(tmp_path / "never-opened"))
    agent.wait_status(stuck, "running")
    agent.process.wait_until(lambda: "step test started" in agent.log_of(stuck), what="web's run in its tests")
    queued = [agent.push(api, "fix: api"), agent.push(docs, "fix: docs")]
    assert [agent.run(n)["status"] for n in queued] == ["queued", "queued"]
    agent.process.kill()

    restarted = start_many(three_repos)
    killed = restarted.run(stuck)
    after = [restarted.wait_finished(n) for n in queued]
    statuses = [run["status"] for run in restarted.runs()]
    observed(
        f"after restart: web run {stuck} {killed['status']}; "
        + "; ".join(f"{run['repo']} run {run['number']} {run['status']} {run['version']}" for run in after)
        + f"; runs running: {statuses.count('running')}"
    )
    assert killed["status"] == "interrupted" and killed["finished_at"], killed
    assert [(run["repo"], run["status"], run["version"]) for run in after] == [
        ("api", "succeeded", "0.1.0"), ("docs", "succeeded", "0.1.0"),
    ]
    assert registry_tags(api.image) == registry_tags(docs.image) == ["0.1.0", "latest"]
    assert registry_tags(web.image) == []
    assert "running" not in statuses


@pytest.mark.reliability(
    "ci-agent serve started with a bad repos file: an unknown key, a table without image, a secret in a "
    "file others can read, a file that is not TOML",
    "exit code 2 with one message naming the file, the table and the key (never the secret); nothing listens",
)
@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        ('[repos.web]\nrepo_url = "file:///x"\nimage = "127.0.0.1:5000/me/web"\nwebhook_secret = "S"\nbrnach = "x"\n',
         0o600, "[repos.web] unknown key(s) 'brnach'"),
        ('[repos.web]\nrepo_url = "file:///x"\nwebhook_secret = "S"\n', 0o600, "[repos.web] image is required"),
        ('[repos.web]\nrepo_url = "file:///x"\nimage = "127.0.0.1:5000/me/web"\nwebhook_secret = "S"\n',
         0o644, "chmod 600"),
        ("[repos.web\n", 0o600, "not valid TOML"),
    ],
)
def test_a_bad_repos_file_at_start(
    tmp_path: Path, text: str, mode: int, expected: str, observed: Callable[[str], None],
    secret: Callable[[str], str],
) -> None:
    value = secret("whsec-bad-file-Zr3-never-shown")
    path = tmp_path / "repos.toml"
    path.write_text(text.replace('"S"', f'"{value}"'))
    path.chmod(mode)
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CI_REPOS_FILE": str(path), "CI_HOST": "127.0.0.1",
           "CI_PORT": str(port), "CI_DASHBOARD_PORT": str(free_port()), "STATE_DIR": str(tmp_path / "state"),
           "LOG_DIR": str(tmp_path / "logs")}
    done = subprocess.run([sys.executable, "-m", "ci_agent", "serve"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    observed(f"exit {done.returncode}: {done.stderr.strip()[:160]}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"ci-agent: error: CI_REPOS_FILE='{path}'"), done.stderr
    assert expected in done.stderr
    assert value not in done.stderr + done.stdout
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


@pytest.mark.reliability(
    "SIGHUP while a run is in progress and another is queued, with a repos file that is broken (an unknown "
    "key); then SIGHUP with a good file that adds a repository",
    "the broken file changes nothing and logs one error line; both runs finish; the good file applies at once "
    "(the new repository's push is accepted and released)",
)
def test_a_bad_repos_file_at_reload(
    three_repos: list[Repo], make_repo: Callable[..., Repo], start_many: StartMany, tmp_path: Path,
    observed: Callable[[str], None],
) -> None:
    web, api, docs = three_repos
    agent = start_many([web, api])
    gate = tmp_path / "gate"
    running = agent.push(web, "held", test_script=gated_test_script(gate))
    agent.wait_status(running, "running")
    queued = agent.push(api, "fix: api")
    write_repos_file(agent.repos_file, [web, api], extra="\n[repos.broken]\nimage = 'x'\ncolour = 'red'\n")
    agent.reload()
    agent.process.wait_until(lambda: "reload refused" in agent.process.output, what="the refusal logged")
    refusals = [line for line in agent.process.output.splitlines() if "reload refused" in line]
    assert len(refusals) == 1 and "[repos.broken]" in refusals[0], refusals
    # Still the old configuration: docs is unknown, web and api work.
    assert agent.deliver_for(docs, docs.payload(docs.project.head())).status_code == 403
    gate.write_text("open")
    finished = [agent.wait_finished(n) for n in (running, queued)]
    assert [run["status"] for run in finished] == ["succeeded", "succeeded"], finished

    write_repos_file(agent.repos_file, [web, api, docs])
    agent.reload()
    agent.process.wait_until(lambda: "reloaded" in agent.process.output, what="the reload logged")
    added = agent.wait_finished(agent.push(docs, "fix: docs"))
    observed(
        f"broken file: {len(refusals)} error line, runs {running} and {queued} "
        f"{'/'.join(run['status'] for run in finished)}; good file: docs run {added['number']} {added['status']} "
        f"{added['version']}"
    )
    assert (added["repo"], added["status"], added["version"]) == ("docs", "succeeded", "0.1.0")
    assert OWN_SECRET not in agent.process.output and ORG_SECRET not in agent.process.output


@pytest.mark.reliability(
    "a push naming repository web (own secret) signed with the organisation secret of api and docs, "
    "and a push naming api signed with web's secret",
    "both refused with 403 and logged as refused; nothing queued; the secrets appear in no answer or log",
)
def test_cross_repository_forgery(
    three_repos: list[Repo], start_many: StartMany, observed: Callable[[str], None]
) -> None:
    web, api, _docs = three_repos
    agent = start_many(three_repos)
    as_org = agent.deliver_for(web, web.payload(web.project.head(), "forged"), secret=ORG_SECRET)
    as_web = agent.deliver_for(api, api.payload(api.project.head(), "forged"), secret=OWN_SECRET)
    observed(f"answers {as_org.status_code} and {as_web.status_code}; runs queued: {len(agent.runs())}")
    assert (as_org.status_code, as_web.status_code) == (403, 403)
    assert agent.runs() == []
    agent.process.wait_until(lambda: agent.process.output.count("refused a delivery for repository") == 2,
                             what="both forgeries logged")
    assert OWN_SECRET not in agent.process.output and ORG_SECRET not in agent.process.output
