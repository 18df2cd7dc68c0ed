"""Annotated tag pushes end to end: a real ``git tag -a``, a payload shaped as GitHub sends it, a real registry.

For an annotated tag GitHub puts the tag OBJECT's sha in ``after`` and the tagged commit in
``head_commit.id`` (lightweight tags have the commit in both). The run must release exactly the
tag's version, built and labelled from the commit.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shared.registry import RegistryClient, parse_image_ref
from tests.support.ci_agent_server import StartAgent, push_payload, registry_tags
from tests.support.docker_env import DockerJanitor
from tests.support.git_repos import GitProject, git

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PASSING = "#!/bin/sh\necho host tests passed\n"


def annotated_tag_payload(project: GitProject, tag: str, tag_object: str, commit: str) -> dict[str, Any]:
    data = push_payload(project, commit, "fix: the tagged commit", ref=f"refs/tags/{tag}")
    data["after"] = tag_object
    data["created"] = True
    data["base_ref"] = f"refs/heads/{project.branch}"
    data["commits"] = []  # a tag push lists no commits; head_commit is the tagged commit
    return data


def test_an_annotated_tag_push_releases_its_version_built_from_the_tagged_commit(
    start_ci_agent: StartAgent, git_project: GitProject, ci_image_name: str, docker_janitor: DockerJanitor
) -> None:
    docker_janitor.images.add(f"{ci_image_name}:1.0.0")
    agent = start_ci_agent(CI_TEST_RUNNER="host", CI_TEST_COMMAND="sh tests/run.sh")
    commit = git_project.commit_sample("fix: the tagged commit", test_script=PASSING)
    git_project.tag("v1.0.0", message="Release 1.0.0")
    tag_object = git("rev-parse", "refs/tags/v1.0.0", cwd=git_project.clone).strip()
    assert git("cat-file", "-t", tag_object, cwd=git_project.clone).strip() == "tag"
    body = annotated_tag_payload(git_project, "v1.0.0", tag_object, commit)

    answer = agent.deliver(body)
    assert answer.status_code == 202, answer.text
    run = agent.wait_finished(answer.json()["run"])

    assert (run["status"], run["version"], run["commit"]) == ("succeeded", "1.0.0", commit), run
    assert registry_tags(ci_image_name) == ["1.0.0", "latest"]
    with RegistryClient(parse_image_ref(ci_image_name)) as client:
        assert client.image_labels("1.0.0")["org.opencontainers.image.revision"] == commit
    assert f"{tag_object} is an annotated tag object; it tags commit {commit}" in agent.log_of(run["number"])

    # The same delivery body again under a new id (a replay): released already, nothing overwritten.
    again = agent.wait_finished(agent.deliver(json.loads(json.dumps(body)), delivery=str(uuid.uuid4())).json()["run"])
    assert (again["status"], again["details"].get("already_released")) == ("superseded", "1.0.0"), again
    assert registry_tags(ci_image_name) == ["1.0.0", "latest"]
