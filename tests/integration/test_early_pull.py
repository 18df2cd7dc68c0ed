"""The watcher pulls a release's image on the real engine while the deploy process starts (cd_agent/early_pull.py)."""

from __future__ import annotations

import pytest

from cd_agent.early_pull import DEFAULT_SOCKET, EarlyPull, engine_socket
from shared.testing import capture_logs
from tests.support.cd_apps import CdWorld

pytestmark = pytest.mark.docker


def test_an_early_pull_leaves_the_release_on_the_engine(cd_world: CdWorld) -> None:
    reference = cd_world.releases.push("1.0.0")  # pushed, its local tag removed
    assert not cd_world.docker_client.images.list(name=reference)

    with capture_logs("DEBUG") as logs:
        thread = EarlyPull(DEFAULT_SOCKET).start(cd_world.target(), "1.0.0")
        assert thread is not None
        thread.join(120)

    assert cd_world.docker_client.images.list(name=reference), [entry.message for entry in logs]
    assert any("early pull of" in entry.message and "done in" in entry.message for entry in logs)


def test_an_early_pull_of_a_missing_tag_changes_nothing_and_says_so_in_debug(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0")
    with capture_logs("DEBUG") as logs:
        thread = EarlyPull(DEFAULT_SOCKET).start(cd_world.target(), "9.9.9")
        assert thread is not None
        thread.join(120)
    failed = [entry.message for entry in logs if "early pull of" in entry.message]
    assert len(failed) == 1 and "failed" in failed[0] and "the deploy pulls it" in failed[0]


def test_no_early_pull_under_swarm_or_for_a_remote_engine(cd_world: CdWorld) -> None:
    assert EarlyPull(DEFAULT_SOCKET).start(cd_world.target(CD_STRATEGY="swarm"), "1.0.0") is None
    assert engine_socket({}) == DEFAULT_SOCKET
    assert engine_socket({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}) == "/run/user/1000/docker.sock"
    assert engine_socket({"DOCKER_HOST": "tcp://10.0.0.2:2376"}) is None
    assert engine_socket({"DOCKER_HOST": "ssh://pi@10.0.0.2"}) is None
