"""What a running ``cd-agent watch`` imports: nothing a deploy alone needs, idle or after a deploy.

The watcher runs with ``python -X importtime``, which prints every module the process imports, when it
imports it, to stderr; its deploy processes are started without the flag, so every import line in the
log is the watcher's own.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.support.cd_apps import CdWorld, clean_environ, state_json, version_of
from tests.support.many_apps import AppsFile
from tests.support.polling import wait_for

pytestmark = pytest.mark.docker

# What only the reconcile and a deploy use: Docker's SDK and its HTTP stack, the deployer, the email sender.
DEPLOY_ONLY = ("docker", "requests", "urllib3", "cd_agent.agent", "cd_agent.deployer", "smtplib", "apprise")
_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(?P<module>\S+)$")


class TimedWatch:
    """``python -X importtime -m cd_agent watch`` with its stderr (log and import lines) in a file."""

    def __init__(self, world: CdWorld, *, settings: dict[str, str] | None = None, **environ: str) -> None:
        """``settings``: the agent's whole environment (an apps file's), instead of ``world``'s with ``environ``."""
        self.log_path = world.root / "watch-importtime.log"
        env = clean_environ(world.environ(**environ) if settings is None else settings)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-X", "importtime", "-m", "cd_agent", "watch"],
                env=env, cwd=world.root, stdout=log, stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def imported(self) -> set[str]:
        return {match.group("module") for line in self.log().splitlines() if (match := _IMPORT_LINE.match(line))}


@pytest.fixture
def timed_watches() -> Iterator[list[TimedWatch]]:
    started: list[TimedWatch] = []
    yield started
    for watch in started:
        if watch.process.poll() is None:
            watch.process.kill()
            watch.process.wait(10)


def deploy_only(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == name or m.startswith(name + ".") for name in DEPLOY_ONLY))


def test_the_watcher_imports_no_deploy_code_while_idle_nor_after_a_deploy(
    cd_world: CdWorld, timed_watches: list[TimedWatch]
) -> None:
    world = cd_world
    world.releases.push("1.0.0")
    watch = TimedWatch(world, CD_POLL_INTERVAL="0.5")
    timed_watches.append(watch)

    # the start-up reconcile, a deploy, then idle polls
    wait_for(lambda: world.served() == "1.0.0", timeout=90, what="1.0.0 served")
    wait_for(lambda: version_of(state_json(world)["current"]) == "1.0.0", timeout=30, what="1.0.0 recorded")
    polled = state_json(world)["last_poll_at"]
    wait_for(lambda: state_json(world)["last_poll_at"] != polled, timeout=30, what="an idle poll after the deploy")

    imported = watch.imported()
    assert "cd_agent.watcher" in imported and "httpx" in imported, "no import lines: is -X importtime honoured?"
    assert deploy_only(imported) == [], watch.log()[-3000:]
    log = watch.log()
    assert "reconcile:" in log and "deployed 1.0.0" in log

    watch.process.send_signal(signal.SIGTERM)
    assert watch.process.wait(30) == 0
    assert "watcher stopped" in watch.log()
    assert "Traceback" not in watch.log()


def test_the_idle_watcher_of_a_blue_green_and_a_swarm_app_imports_no_docker(
    swarm_mode: None, cd_world: CdWorld, new_world: Callable[[], CdWorld], apps_file: AppsFile,
    timed_watches: list[TimedWatch],
) -> None:
    """Their settings check the proxy's ports and read the strategy table, but load neither the proxy nor Swarm."""
    green, swarm = cd_world, new_world()
    apps_file.add(green, CD_STRATEGY="blue-green", CD_HEALTH_URL=green.url, CD_POLL_INTERVAL="0.5")
    apps_file.add(swarm, CD_STRATEGY="swarm", CD_PORTS="", CD_POLL_INTERVAL="0.5")
    apps_file.write()
    watch = TimedWatch(green, settings=apps_file.environ())
    timed_watches.append(watch)

    for world in (green, swarm):  # nothing pushed: the start-up reconciles, then idle polls
        wait_for(partial(lambda name: apps_file.state(name).get("last_poll_at"), world.name), timeout=60,
                 what=f"{world.name} polled")

    imported = watch.imported()
    assert "cd_agent.watcher" in imported and "cd_agent.apps_watch" in imported, watch.log()[-3000:]
    assert "cd_agent.proxy_ports" in imported and "cd_agent.strategies" in imported
    assert deploy_only(imported) == [], watch.log()[-3000:]
    assert not {"cd_agent.proxy", "cd_agent.swarm", "cd_agent.swarm_services"} & imported
    watch.process.send_signal(signal.SIGTERM)
    assert watch.process.wait(30) == 0



def test_docker_out_of_reach_at_start_still_stops_the_watcher_with_exit_3(tmp_path: Path) -> None:
    """The start-up reconcile runs in a deploy process now; its "cannot start" is still the watcher's."""
    environ = {
        "DOCKER_HOST": f"unix://{tmp_path / 'no-dockerd.sock'}", "CD_IMAGE": "127.0.0.1:5999/o/app",
        "CD_CONTAINER_NAME": "picicd-lean-nodocker", "STATE_DIR": str(tmp_path / "state"),
        "LOG_DIR": str(tmp_path / "logs"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "cd_agent", "watch"], env=clean_environ(environ), cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().endswith(
        f"cd-agent: cannot reach the Docker Engine: no socket at {tmp_path / 'no-dockerd.sock'} (is dockerd running?)"
    )
    assert "Traceback" not in result.stderr


def _imports_of_a_deploy_process(**environ: str) -> set[str]:
    """The modules ``python -m cd_agent.deploy_child`` imports before it reads its request (none here)."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cd_agent.deploy_child"], input=b"", capture_output=True,
        env={"PATH": "/usr/bin:/bin", **environ}, timeout=120, check=False,
    )
    lines = completed.stderr.decode(errors="replace").splitlines()
    return {match["module"] for line in lines if (match := _IMPORT_LINE.match(line))}


def test_a_deploy_process_does_not_import_paramiko_unless_docker_is_reached_over_ssh() -> None:
    """paramiko (for CI_BUILD_DOCKER_HOST=ssh://) is installed here as in the agents' image; the Docker SDK
    would import it, and its cryptography, into every deploy process, before the release is served."""
    local = _imports_of_a_deploy_process()
    # (an import of a None entry still prints a line for "paramiko" itself, and fails)
    assert "docker" in local and "paramiko.transport" not in local and "cryptography" not in local
    assert "paramiko.transport" in _imports_of_a_deploy_process(DOCKER_HOST="ssh://ci@127.0.0.1")
