"""A CD_ENV_FILE that is not UTF-8: refused at start-up, and again before any step of a deploy when it
changed under a running agent (it once crashed a deploy after the old container was renamed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cd_agent.state import DeployState
from shared.runstore import RunStore
from tests.support.cd_apps import CdWorld, WatchProcess, cd_agent
from tests.support.polling import wait_for

Observed = Callable[[str], None]
LATIN_1 = b"GREETING=gr\xfc\xdf dich\n"


@pytest.mark.reliability(
    "cd-agent started with a CD_ENV_FILE written in Latin-1 (not UTF-8)",
    "exit 2 before anything runs, the message names CD_ENV_FILE, the line and the byte; no traceback",
)
def test_a_latin1_env_file_is_refused_at_start_up(tmp_path: Path, observed: Observed) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_bytes(b"A=1\n" + LATIN_1)
    environ = {
        "CD_IMAGE": "127.0.0.1:5000/o/app", "CD_CONTAINER_NAME": "picicd-envfile", "CD_ENV_FILE": str(env_file),
        "STATE_DIR": str(tmp_path / "state"), "LOG_DIR": str(tmp_path / "logs"),
    }

    result = cd_agent("deploy", "1.0.0", environ=environ, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert "CD_ENV_FILE" in result.stderr and "is not UTF-8 text (byte 0xfc on line 2)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()
    observed(f"exit 2: {result.stderr.strip().splitlines()[-1][:160]}")


@pytest.mark.docker
@pytest.mark.reliability(
    "`cd-agent watch` running with a good CD_ENV_FILE; the file is rewritten in Latin-1, then a new release "
    "is pushed",
    "the deploy fails before any step (old container untouched, still serving under its name), the run ends "
    "failed at 'prepare' (not left running), the release is not quarantined, no traceback; once the file is "
    "fixed the release is deployed",
)
def test_an_env_file_broken_under_a_running_agent_fails_the_deploy_before_any_step(
    cd_world: CdWorld, watches: list[WatchProcess], observed: Observed
) -> None:
    world = cd_world
    env_file = world.root / "app.env"
    env_file.write_text("GREETING=hello\n")
    world.overrides["CD_ENV_FILE"] = str(env_file)
    world.releases.push("1.0.0")
    process = WatchProcess(world.environ(CD_POLL_INTERVAL="0.5"), world.root)
    watches.append(process)
    wait_for(lambda: world.served() == "1.0.0", timeout=90, what="1.0.0 deployed")
    before = world.docker_client.containers.get(world.name).id

    env_file.write_bytes(LATIN_1)
    world.releases.push("1.1.0")

    # Read the databases by path: loading the settings would now refuse the env file, as the agent would.
    state_dir = world.root / "state"

    def failed_runs() -> list[tuple[str | None, str, str | None, str | None]]:
        assert process.process.poll() is None, process.log()[-3000:]
        with RunStore(state_dir / "runs.sqlite3") as runs:
            return [(r.version, r.status, r.failed_step, r.error) for r in runs.list() if r.status == "failed"]

    failed = wait_for(failed_runs, timeout=90, what="the deploy of 1.1.0 to fail")
    version, _, step, error = failed[0]
    assert (version, step) == ("1.1.0", "prepare"), failed
    assert error is not None and "CD_ENV_FILE" in error and "not UTF-8" in error
    assert world.served() == "1.0.0"
    assert world.docker_client.containers.get(world.name).id == before
    assert world.containers() == [world.name]
    with DeployState(state_dir / "cd.sqlite3") as state:
        assert state.quarantined == {} and state.journal is None

    env_file.write_text("GREETING=hello again\n")

    def deployed() -> bool:
        with DeployState(state_dir / "cd.sqlite3") as state:
            current = state.current
        return world.served() == "1.1.0" and current is not None and current.version == "1.1.0"

    wait_for(deployed, timeout=90, what="1.1.0 deployed and recorded once the file is fixed")
    assert world.served("greeting.txt") == "hello again"
    assert "Traceback" not in process.log()
    assert process.stop() == 0
    observed(f"{len(failed)} deploy(s) failed at prepare ({error[:120]}); 1.0.0 untouched; 1.1.0 deployed once fixed")
