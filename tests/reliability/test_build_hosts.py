"""CI_BUILD_DOCKER_HOST faults: the build engine (a second dockerd on this machine, behind a unix socket
relay that can be taken down) lost in the middle of a build."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from ci_agent.builder import DockerGateway
from shared.runstore import Run
from tests.support.build_hosts import Engine
from tests.support.docker_env import DockerJanitor, unique
from tests.support.fault_proxy import DockerSocketRelay
from tests.support.git_repos import SAMPLE_DOCKERFILE, make_git_project
from tests.support.platform_apps import make_platform_agent
from tests.support.polling import wait_for
from tests.support.registry_server import RegistryServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SLOW_BUILD = SAMPLE_DOCKERFILE.replace('CMD ["httpd"', 'RUN ["/bin/busybox", "sleep", "20"]\nCMD ["httpd"')


@pytest.mark.reliability(
    "CI_BUILD_DOCKER_HOST is another engine (a second dockerd, reached through a socket relay) and the "
    "connection to it is lost while the Dockerfile's RUN step runs; then it comes back",
    "the run fails at step build saying the connection to that engine was lost (named), one email, nothing "
    "tagged; the next run builds on that engine again and releases, without restarting anything",
)
def _log_of(run: Run | None) -> str:
    path = Path(run.log_path) if run is not None and run.log_path else None
    return path.read_text() if path is not None and path.is_file() else ""


# docker-py leaves the socket of a build stream the engine cut to the garbage collector (ResourceWarning).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_build_engine_lost_mid_build(
    tmp_path: Path, registry: RegistryServer, second_engine: Engine, docker_janitor: DockerJanitor
):
    directory = Path(tempfile.mkdtemp(prefix="picicd-engine2-"))  # unix socket paths are short
    relay = DockerSocketRelay(directory / "docker.sock", target=str(second_engine.socket))
    project = make_git_project(tmp_path)
    project.commit_sample()
    slow = project.commit({"Dockerfile": SLOW_BUILD}, "feat: a build that takes 20 s")
    project.push()
    agent = make_platform_agent(
        tmp_path, f"{registry.host}/{unique('remote')}/app", project.url,
        DockerGateway(build_host=relay.docker_host), ci_build_docker_host=relay.docker_host,
    )
    remote = second_engine.client()
    finished: list[Run] = []
    try:
        worker = threading.Thread(target=lambda: finished.append(agent.run(slow)), daemon=True)
        worker.start()
        wait_for(lambda: "sleep" in _log_of(agent.store.get(1)), timeout=60, what="the slow RUN step")
        relay.down()
        worker.join(timeout=60)
        [broken] = finished
        assert (broken.status, broken.failed_step, broken.version) == ("failed", "build", None), agent.log(broken)
        assert f"lost the connection to the Docker Engine at {relay.docker_host}" in (broken.error or "")
        assert agent.registry.list_tags() == []
        [email] = agent.emails()
        assert "failed at build" in email.subject

        relay.up()
        fixed = project.commit({"Dockerfile": SAMPLE_DOCKERFILE}, "fix: a quick build again")
        project.push()
        after = agent.run(fixed)
        assert (after.status, after.version) == ("succeeded", "0.1.0"), agent.log(after)
        assert f"this run builds on the build engine {relay.docker_host}" in agent.log(after)
        assert sorted(agent.registry.list_tags()) == ["0.1.0", "latest"]
    finally:
        relay.close()
        shutil.rmtree(directory, ignore_errors=True)
        for reference in agent.local_references():
            try:
                remote.images.remove(reference, force=True)
            except Exception:  # noqa: S110 - cleanup of what may not exist
                pass
        remote.close()
        agent.pipeline.docker.close()
        agent.close()
