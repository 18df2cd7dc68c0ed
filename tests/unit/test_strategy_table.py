"""The strategy table is the one place that chooses by strategy: its adapters column makes the real proxy
controller and Swarm services, and no other module of the CD agent branches on a strategy's name."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import docker
import pytest

import cd_agent
from cd_agent.apps import AppTarget, single_target
from cd_agent.deployer import Deployer
from cd_agent.docker_gateway import DockerGateway
from cd_agent.errors import DeployError
from cd_agent.proxy import ProxyController
from cd_agent.settings import CdSettings
from cd_agent.state import DeployState
from cd_agent.strategies import STRATEGIES, Adapters
from shared.notify import Notifier
from shared.runstore import RunStore
from shared.settings import load_settings
from shared.testing import RecordingMailer
from tests.support.fake_engine import FakeEngine

# A comparison of something's strategy with a literal name: the choice the table makes instead.
BRANCH_ON_NAME = re.compile(r"strategy\s*(==|!=|\bin\b)\s*[\"'({\[]")


def target_of(tmp_path: Path, strategy: str) -> AppTarget:
    settings = load_settings(CdSettings, {
        "CD_IMAGE": "127.0.0.1:5000/web", "CD_CONTAINER_NAME": "web", "CD_PORTS": "18080:8080",
        "LOG_DIR": str(tmp_path / "logs"), "STATE_DIR": str(tmp_path / "state"),
    })
    return replace(single_target(settings), strategy=strategy)  # type: ignore[arg-type]


def test_no_module_outside_the_table_branches_on_a_strategys_name() -> None:
    package = Path(cd_agent.__file__).parent
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py")) if path.name != "strategies.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if BRANCH_ON_NAME.search(line)
    ]
    assert found == []


@pytest.mark.parametrize("strategy", ["swap", "compose"])
def test_strategies_without_adapters_make_none(tmp_path: Path, strategy: str) -> None:
    assert STRATEGIES[strategy].adapters(target_of(tmp_path, strategy), FakeEngine()) == Adapters()


def test_blue_green_makes_its_proxy_controller_over_the_gateways_client(tmp_path: Path) -> None:
    # No daemon is contacted: a client with a fixed API version connects only when used.
    client = docker.DockerClient(base_url="unix:///nonexistent.sock", version="1.41")
    try:
        made = STRATEGIES["blue-green"].adapters(target_of(tmp_path, "blue-green"), DockerGateway(client))
    finally:
        client.close()
    assert isinstance(made.proxy, ProxyController) and made.swarm is None


def test_a_blue_green_deployer_without_a_proxy_or_a_docker_gateway_says_what_it_lacks(tmp_path: Path) -> None:
    target = target_of(tmp_path, "blue-green")
    with pytest.raises(DeployError, match="blue-green needs the proxy controller"):
        Deployer(target, FakeEngine(), DeployState(target.paths.state), RunStore(target.paths.runs),
                 Notifier(RecordingMailer(), attempts=1))
