"""Replayed pushes release nothing: a real ``ci-agent serve``, the real registry, real git repositories.

A captured signed delivery can be sent again by anyone who saw it (the delivery id is not signed).
These scenarios replay exact bodies and signatures under new delivery ids and check that nothing old
is released again, nothing newer is superseded, and git itself cannot be turned against the agent.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.registry import RegistryClient, parse_image_ref
from tests.support.ci_agent_server import (
    GITHUB_REPO,
    CiAgentProcess,
    StartAgent,
    gated_test_script,
    push_payload,
    registry_tags,
)
from tests.support.git_http import TOKEN_USER, GitHttpServer, git_argv_recorder
from tests.support.git_repos import GitProject, git
from tests.support.github_api import GitHubApi
from tests.support.smtp_server import SmtpServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PASSING = "#!/bin/sh\necho host tests passed\n"
HOST_RUNNER = {"CI_TEST_RUNNER": "host", "CI_TEST_COMMAND": "sh tests/run.sh"}


def replay(agent: CiAgentProcess, raw: bytes, signature: str, delivery: str | None) -> httpx.Response:
    """POST ``raw`` with the captured ``signature``; a new delivery id, or none at all."""
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-Hub-Signature-256": signature}
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    answer = httpx.post(f"{agent.url}/webhook", content=raw, headers=headers, timeout=10)
    agent.answers.append(answer.text)
    return answer


def delivered(agent: CiAgentProcess, project: GitProject, sha: str, message: str) -> dict[str, Any]:
    """Deliver a fresh push of ``sha`` and wait for its run to finish."""
    answer = agent.deliver(push_payload(project, sha, message))
    assert answer.status_code == 202, answer.text
    return agent.wait_finished(answer.json()["run"])


def describe(run: dict[str, Any] | None) -> str:
    if run is None:
        return "no run"
    return f"run {run['number']} {run['status']}, version {run['version']}: {run['reason'] or run['error']}"


def latest_revision(image: str) -> str:
    with RegistryClient(parse_image_ref(image)) as client:
        return client.image_labels("latest")["org.opencontainers.image.revision"]


def captured(agent: CiAgentProcess, data: dict[str, Any]) -> tuple[bytes, str]:
    raw = json.dumps(data).encode()
    return raw, agent.headers(raw)["X-Hub-Signature-256"]


@pytest.mark.reliability(
    "a captured signed push of commit A (released 0.1.0) is replayed with a new X-GitHub-Delivery after "
    "commit B was released as 0.1.1 (a rollback attack); once more with no delivery id; and once more "
    "after the agent restarted with an empty STATE_DIR (its run history lost)",
    "no new tag (0.1.2 never appears), `latest` stays on B: the replay is answered as a duplicate of A's "
    "run; without an id it is refused with 400; with no history the run ends `superseded` saying "
    '"already released as 0.1.0" (no test, no email)',
)
def test_replayed_old_push_releases_nothing(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    ci_image_name: str,
    tmp_path: Path,
    observed: Callable[[str], None],
) -> None:
    agent = start_ci_agent(**HOST_RUNNER)
    first = git_project.commit_sample("first", test_script=PASSING)
    raw_a, signature_a = captured(agent, push_payload(git_project, first, "fix: first"))
    run_a = agent.wait_finished(replay(agent, raw_a, signature_a, str(uuid.uuid4())).json()["run"])
    assert (run_a["status"], run_a["version"]) == ("succeeded", "0.1.0"), (run_a["failed_step"], run_a["error"])
    second = git_project.commit({"www/index.html": "<p>hello B</p>\n"}, "fix: second")
    git_project.push()
    run_b = agent.wait_finished(agent.deliver(push_payload(git_project, second, "fix: second")).json()["run"])
    assert (run_b["status"], run_b["version"]) == ("succeeded", "0.1.1"), run_b

    answer = replay(agent, raw_a, signature_a, "anything-new")
    no_id = replay(agent, raw_a, signature_a, None)
    runs_before_restart = len(agent.runs())
    agent.process.stop()
    shutil.rmtree(tmp_path / "state")
    agent = start_ci_agent(**HOST_RUNNER)
    fresh = replay(agent, raw_a, signature_a, str(uuid.uuid4()))
    replayed = agent.wait_finished(fresh.json()["run"]) if fresh.status_code == 202 else None
    tags = registry_tags(ci_image_name)
    observed(
        f"replay answered {answer.status_code} {answer.text}; without a delivery id: {no_id.status_code} "
        f"{no_id.text[:80]}; {runs_before_restart} runs; after the restart with no history: "
        f"{fresh.status_code}, {describe(replayed)}; registry tags {tags}"
    )
    assert tags == ["0.1.0", "0.1.1", "latest"]
    assert latest_revision(ci_image_name) == second
    assert (answer.status_code, answer.json()) == (200, {"duplicate": True, "run": run_a["number"]})
    assert no_id.status_code == 400 and "X-GitHub-Delivery" in no_id.text
    assert runs_before_restart == 2
    assert replayed is not None
    assert (replayed["status"], replayed["version"], replayed["failed_step"]) == ("superseded", None, None), replayed
    assert "already released as 0.1.0" in replayed["reason"]
    assert replayed["details"]["already_released"] == "0.1.0"
    assert "step test started" not in agent.log_of(replayed["number"])


@pytest.mark.reliability(
    "commits A (released 0.1.0), A2 (pushed, its delivery captured but never delivered) and B (released "
    "0.1.1); A2's captured push is then delivered under a new delivery id",
    "A2 is an ancestor of the latest release's commit: nothing released, the run ends `superseded` "
    "saying it would roll back; tags stay 0.1.0, 0.1.1",
)
def test_replayed_ancestor_of_the_latest_release_releases_nothing(
    start_ci_agent: StartAgent, git_project: GitProject, ci_image_name: str, observed: Callable[[str], None]
) -> None:
    agent = start_ci_agent(**HOST_RUNNER)
    first = git_project.commit_sample("first", test_script=PASSING)
    assert delivered(agent, git_project, first, "fix: a")["version"] == "0.1.0"
    middle = git_project.commit({"www/middle.html": "m\n"}, "fix: never delivered")
    git_project.push()
    raw, signature = captured(agent, push_payload(git_project, middle, "fix: never delivered"))
    second = git_project.commit({"www/index.html": "<p>hello B</p>\n"}, "fix: b")
    git_project.push()
    assert delivered(agent, git_project, second, "fix: b")["version"] == "0.1.1"

    answer = replay(agent, raw, signature, str(uuid.uuid4()))
    assert answer.status_code == 202, answer.text
    replayed = agent.wait_finished(answer.json()["run"])
    tags = registry_tags(ci_image_name)
    observed(f"{describe(replayed)}; registry tags {tags}")
    assert tags == ["0.1.0", "0.1.1", "latest"]
    assert replayed["status"] == "superseded", replayed
    assert "older than release 0.1.1" in replayed["reason"]


@pytest.mark.reliability(
    "commit X is pushed (its delivery captured, never delivered), then a force push replaces it with C "
    "(released 0.1.1); X's captured push is delivered afterwards",
    "X is no longer on the tracked branch: nothing released, the run ends `superseded` naming the branch "
    "head; tags stay 0.1.0, 0.1.1 and `latest` stays on C",
)
def test_replayed_commit_that_a_force_push_removed_releases_nothing(
    start_ci_agent: StartAgent, git_project: GitProject, ci_image_name: str, observed: Callable[[str], None]
) -> None:
    agent = start_ci_agent(**HOST_RUNNER)
    first = git_project.commit_sample("first", test_script=PASSING)
    assert delivered(agent, git_project, first, "fix: a")["version"] == "0.1.0"
    dropped = git_project.commit({"www/index.html": "<p>hello X</p>\n"}, "feat: dropped later")
    git_project.push()
    raw, signature = captured(agent, push_payload(git_project, dropped, "feat: dropped later"))
    git("reset", "--quiet", "--hard", first, cwd=git_project.clone)
    replacement = git_project.commit({"www/index.html": "<p>hello C</p>\n"}, "fix: c")
    git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{git_project.branch}", cwd=git_project.clone)
    released = agent.wait_finished(agent.deliver(push_payload(git_project, replacement, "fix: c")).json()["run"])
    assert released["version"] == "0.1.1", released

    replayed = agent.wait_finished(replay(agent, raw, signature, str(uuid.uuid4())).json()["run"])
    tags = registry_tags(ci_image_name)
    observed(f"{describe(replayed)}; registry tags {tags}")
    assert tags == ["0.1.0", "0.1.1", "latest"]
    assert latest_revision(ci_image_name) == replacement
    assert replayed["status"] == "superseded", replayed
    assert "no longer on refs/heads/main" in replayed["reason"] and replacement in replayed["reason"]


@pytest.mark.reliability(
    "while run A is in progress, a newer push B is queued and then A's captured push is replayed under a "
    "new delivery id (arriving after B)",
    "the replay never supersedes B: B stays queued, then releases 0.1.1; the replay ends `superseded` "
    "by B's run (`superseded_by` in its JSON)",
)
def test_replay_never_supersedes_a_newer_queued_push(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    ci_image_name: str,
    tmp_path: Path,
    observed: Callable[[str], None],
) -> None:
    gate = tmp_path / "gate"
    agent = start_ci_agent(**HOST_RUNNER)
    first = git_project.commit_sample("first", test_script=gated_test_script(gate))
    raw, signature = captured(agent, push_payload(git_project, first, "fix: a"))
    running = replay(agent, raw, signature, str(uuid.uuid4())).json()["run"]
    # Past its checks and inside the tests: from here on, nothing queued can supersede it.
    agent.process.wait_until(lambda: "step test started" in agent.log_of(running), what="run A in its tests")
    second = git_project.commit({"tests/run.sh": PASSING}, "fix: b")
    git_project.push()
    newer = agent.deliver(push_payload(git_project, second, "fix: b")).json()["run"]
    replayed = replay(agent, raw, signature, str(uuid.uuid4())).json()["run"]
    status_after_replay = agent.run(newer)["status"]

    gate.touch()
    runs = agent.wait_all_finished(expected=3)
    by_number = {run["number"]: run for run in runs}
    tags = registry_tags(ci_image_name)
    observed(
        f"B's run {newer} was {status_after_replay} after the replay arrived, then {by_number[newer]['status']} "
        f"with {by_number[newer]['version']}; replay {describe(by_number[replayed])}, superseded_by "
        f"{by_number[replayed]['superseded_by']}; registry tags {tags}"
    )
    assert status_after_replay == "queued"
    assert (by_number[newer]["status"], by_number[newer]["version"]) == ("succeeded", "0.1.1")
    assert (by_number[replayed]["status"], by_number[replayed]["superseded_by"]) == ("superseded", newer)
    assert tags == ["0.1.0", "0.1.1", "latest"]
    assert latest_revision(ci_image_name) == second


@pytest.mark.reliability(
    "with CI_TEST_RUNNER=host, a commit's tests plant executable hooks (post-checkout, "
    "reference-transaction) in the agent's persistent work folder's .git/hooks; a later push is run",
    "no planted hook ever runs (git runs with core.hooksPath=/dev/null); the later run succeeds",
)
def test_a_hook_planted_by_the_tests_never_runs(
    start_ci_agent: StartAgent, git_project: GitProject, tmp_path: Path, observed: Callable[[str], None]
) -> None:
    marker = tmp_path / "hook-ran"
    planting = (
        "#!/bin/sh\n"
        "for hook in post-checkout reference-transaction post-index-change; do\n"
        f"  printf '#!/bin/sh\\necho %s >> {marker}\\n' $hook > .git/hooks/$hook\n"
        "  chmod +x .git/hooks/$hook\n"
        "done\n"
        "echo planted\n"
    )
    agent = start_ci_agent(**HOST_RUNNER)
    first = git_project.commit_sample("first", test_script=planting)
    planted = delivered(agent, git_project, first, "fix: plants hooks")
    second = git_project.commit({"tests/run.sh": PASSING}, "fix: b")
    git_project.push()
    later = delivered(agent, git_project, second, "fix: b")
    hooks = sorted(
        path.name
        for path in (tmp_path / "state" / "work" / "checkout" / ".git" / "hooks").iterdir()
        if os.access(path, os.X_OK)
    )
    observed(
        f"run {planted['number']} planted {hooks}; run {later['number']} {later['status']} {later['version']}; "
        f"hook marker {'written: ' + marker.read_text() if marker.exists() else 'never written'}"
    )
    assert planted["status"] == "succeeded", planted
    assert {"post-checkout", "reference-transaction"} <= set(hooks)
    assert (later["status"], later["version"]) == ("succeeded", "0.1.1"), later
    assert not marker.exists()


ARGV_TOKEN = "ghp-argv-test-Zr4n-never-in-argv"


@pytest.fixture
def git_http_server(tmp_path: Path) -> Iterator[GitHttpServer]:
    """A smart-HTTP git server over ``git_project``'s bare repository, wanting ARGV_TOKEN."""
    with GitHttpServer(tmp_path / "git", TOKEN_USER, ARGV_TOKEN) as server:
        yield server


@pytest.mark.reliability(
    "CI_REPO_URL carries a token (http://x-access-token:TOKEN@…) for a real smart-HTTP git server "
    "(git http-backend behind basic auth); every git process the agent starts is recorded (argv + GIT_TRACE)",
    "the token is in no git argv (/proc/PID/cmdline is world-readable), the server received the "
    "credentials, the run releases 0.1.0",
)
def test_a_token_in_the_repository_url_never_reaches_gits_argv(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    git_http_server: GitHttpServer,
    tmp_path: Path,
    secret: Callable[[str], str],
    observed: Callable[[str], None],
) -> None:
    token = secret(ARGV_TOKEN)
    wrapper, record = git_argv_recorder(tmp_path / "bin")
    url = git_http_server.url("origin.git", user=TOKEN_USER, password=token)
    agent = start_ci_agent(
        CI_REPO_URL=url, PATH=f"{wrapper.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}", **HOST_RUNNER
    )
    sha = git_project.commit_sample("first", test_script=PASSING)
    run = delivered(agent, git_project, sha, "fix: private")
    argv = record.read_text() if record.exists() else ""
    commands = [line for line in argv.splitlines() if line.startswith("argv: ")]
    observed(
        f"run {run['number']} {run['status']} {run['version']}; {len(commands)} git commands, "
        f"{argv.count('run_command')} git children traced; token in argv: {token in argv}; "
        f"server: {git_http_server.authorized} authorized, {git_http_server.refused} refused requests"
    )
    assert (run["status"], run["version"]) == ("succeeded", "0.1.0"), run
    assert any("fetch" in line for line in commands) and any("ls-remote" in line for line in commands)
    assert token not in argv
    assert git_http_server.authorized > 0


FAILING = "#!/bin/sh\necho one test failed\nexit 1\n"
STATUS_TOKEN = "github_pat_replay-Wd4k-never-shown"


@pytest.fixture
def github(secret: Callable[[str], str]) -> Iterator[GitHubApi]:
    server = GitHubApi(GITHUB_REPO, secret(STATUS_TOKEN)).start()
    yield server
    server.stop()


@pytest.mark.reliability(
    "a signed push of a commit whose tests fail, with email (a real SMTP server) and commit statuses (a local "
    "GitHub statuses API); its captured body is replayed under a new X-GitHub-Delivery, under the same one "
    "(GitHub's Redeliver), and again after the agent restarted",
    "one run, one failure email and one failure status: each replay is answered 200 as a duplicate of the failed "
    "run with a reason naming `ci-agent run` (no test, no email, no status); a new commit that fixes the tests "
    "is tested and released",
)
def test_replayed_failing_push_tests_nothing_again(
    start_ci_agent: StartAgent,
    git_project: GitProject,
    ci_image_name: str,
    smtp_server: SmtpServer,
    github: GitHubApi,
    produced: Callable[[str, str | bytes], None],
    observed: Callable[[str], None],
) -> None:
    settings = {
        **HOST_RUNNER, "SMTP_HOST": smtp_server.host, "SMTP_PORT": str(smtp_server.port), "SMTP_SECURITY": "none",
        "NOTIFY_FROM": "ci@example.invalid", "NOTIFY_TO": "dev@example.invalid",
        "CI_GITHUB_TOKEN": STATUS_TOKEN, "CI_GITHUB_API_URL": github.url,
    }
    agent = start_ci_agent(**settings)
    broken = git_project.commit_sample("broken", test_script=FAILING)
    raw, signature = captured(agent, push_payload(git_project, broken, "fix: broken"))
    delivery = str(uuid.uuid4())
    first = agent.wait_finished(replay(agent, raw, signature, delivery).json()["run"])
    assert (first["status"], first["failed_step"]) == ("failed", "test"), first
    smtp_server.wait_for_messages(1, timeout=30)
    agent.process.wait_until(lambda: [s for s, _ in github.states(broken)][-1:] == ["failure"],
                             what="the failure status on GitHub")
    states_before = [state for state, _ in github.states(broken)]

    replays = [replay(agent, raw, signature, str(uuid.uuid4())), replay(agent, raw, signature, delivery)]
    agent.process.stop()
    agent = start_ci_agent(**settings)
    replays.append(replay(agent, raw, signature, str(uuid.uuid4())))
    runs_after_replays = len(agent.runs())
    fixed = git_project.commit({"tests/run.sh": PASSING}, "fix: the tests pass again")
    git_project.push()
    released = delivered(agent, git_project, fixed, "fix: the tests pass again")
    mails = smtp_server.messages
    for mail in mails:
        produced("failure email", mail.as_string())
    states = [state for state, _ in github.states(broken)]
    observed(
        f"replays answered {[(r.status_code, r.json().get('run')) for r in replays]}, e.g. "
        f"{replays[0].json().get('reason', '')[:90]!r}...; {runs_after_replays} run(s) for the failing commit; "
        f"{len(mails)} email(s); statuses of the commit {states}; the fix: {describe(released)}"
    )
    for answer in replays:
        assert answer.status_code == 200, answer.text
        assert answer.json()["duplicate"] is True and answer.json()["run"] == first["number"], answer.text
        assert "ci-agent run" in answer.json()["reason"]
    assert runs_after_replays == 1
    assert len(mails) == 1
    assert states == states_before and states[-1] == "failure" and states.count("failure") == 1
    assert (released["status"], released["version"]) == ("succeeded", "0.1.0"), released
