"""CI_BUILD_DOCKER_HOST: test and build steps on another Docker engine (a second dockerd on this machine, with
its own socket and data root), directly and over ssh://; the image goes from that engine to the registry."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from ci_agent.builder import DockerGateway
from shared.runstore import Run
from tests.support.build_hosts import Engine, SshEngine
from tests.support.docker_env import DockerJanitor, unique
from tests.support.git_repos import make_git_project
from tests.support.platform_apps import make_platform_agent
from tests.support.registry_server import RegistryServer

pytestmark = pytest.mark.docker


@dataclass
class Outcome:
    run: Run
    log: str
    tags: list[str]
    emails: list[Any]


def _release_on(host: str, tmp_path: Path, registry: RegistryServer, engine: Engine, janitor: DockerJanitor,
                **settings: Any) -> Outcome:
    """One run of the sample app with ``CI_BUILD_DOCKER_HOST=host``; what the second engine kept is removed."""
    project = make_git_project(tmp_path)
    commit = project.commit_sample()
    image = f"{registry.host}/{unique('remote')}/app"
    agent = make_platform_agent(
        tmp_path, image, project.url,
        DockerGateway(build_host=host, fallback_local=bool(settings.get("ci_build_fallback_local"))),
        ci_build_docker_host=host, **settings,
    )
    janitor.images.update(agent.local_references())
    remote = engine.client()
    try:
        run = agent.run(commit)
        return Outcome(run, agent.log(run), sorted(agent.registry.list_tags()), agent.emails())
    finally:
        for reference in agent.local_references():
            with contextlib.suppress(docker.errors.ImageNotFound):
                remote.images.remove(reference, force=True)
        remote.close()
        agent.pipeline.docker.close()
        agent.close()


def test_a_release_built_on_the_second_engine_goes_from_there_to_the_registry(
    tmp_path: Path, registry: RegistryServer, second_engine: Engine, docker_janitor: DockerJanitor, docker_client: Any
):
    outcome = _release_on(second_engine.host, tmp_path, registry, second_engine, docker_janitor)
    assert (outcome.run.status, outcome.run.version) == ("succeeded", "0.1.0"), outcome.log
    assert f"this run builds on the build engine {second_engine.host} (Docker " in outcome.log
    assert "sample tests passed" in outcome.log
    assert outcome.tags == ["0.1.0", "latest"]


def test_over_ssh_the_release_is_built_by_the_engine_behind_sshd(
    tmp_path: Path, registry: RegistryServer, ssh_engine: SshEngine, docker_janitor: DockerJanitor,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("HOME", str(ssh_engine.home))  # paramiko's ~/.ssh: the test's key and known host
    outcome = _release_on(ssh_engine.host, tmp_path, registry, ssh_engine.engine, docker_janitor)
    assert (outcome.run.status, outcome.run.version) == ("succeeded", "0.1.0"), outcome.log
    assert f"this run builds on the build engine {ssh_engine.host} (Docker " in outcome.log
    assert outcome.tags == ["0.1.0", "latest"]


def test_an_unreachable_build_engine_fails_the_run_at_its_step_with_the_email(
    tmp_path: Path, registry: RegistryServer, second_engine: Engine, docker_janitor: DockerJanitor
):
    nowhere = f"unix://{tmp_path / 'no-engine.sock'}"
    outcome = _release_on(nowhere, tmp_path, registry, second_engine, docker_janitor)
    run = outcome.run
    assert (run.status, run.failed_step, run.version) == ("failed", "test", None)
    assert f"cannot reach the build engine {nowhere} (CI_BUILD_DOCKER_HOST)" in (run.error or "")
    [email] = outcome.emails
    assert "failed at test" in email.subject and "cannot reach the build engine" in email.body
    assert outcome.tags == []


def test_an_unreachable_build_engine_with_fallback_builds_on_the_local_engine(
    tmp_path: Path, registry: RegistryServer, second_engine: Engine, docker_janitor: DockerJanitor
):
    nowhere = f"unix://{tmp_path / 'no-engine.sock'}"
    outcome = _release_on(nowhere, tmp_path, registry, second_engine, docker_janitor, ci_build_fallback_local=True)
    assert (outcome.run.status, outcome.run.version) == ("succeeded", "0.1.0"), outcome.log
    assert f"this run builds on the local Docker engine (cannot reach the build engine {nowhere}" in outcome.log
    assert "CI_BUILD_FALLBACK_LOCAL=true" in outcome.log
    assert outcome.tags == ["0.1.0", "latest"]
