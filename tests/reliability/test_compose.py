"""CD_STRATEGY=compose when things go wrong: a broken release inside a stack, a kill mid-deploy, bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shared.runstore import RunStore
from tests.support.cd_apps import WatchProcess, cd_agent, killed_then_watched, state_json, version_of
from tests.support.compose_cli import both_compose_versions
from tests.support.compose_stack import DB_HEALTH_URL, Stack
from tests.support.polling import wait_for
from tests.support.smtp_server import SmtpServer

pytestmark = [pytest.mark.docker, both_compose_versions]

Observed = Callable[[str], None]


def _pin(stack: Stack) -> Path:
    return stack.world.target().paths.state_dir / "compose-pin.yml"


@pytest.mark.reliability(
    "A broken release of the web service of a compose stack (web + db) found by `cd-agent watch`",
    "the db container is neither recreated nor restarted (same id, same start time); web is put back to the "
    "compose file's own release (the pin removed), serves it, the release is quarantined and the email says "
    "rolled back",
)
def test_a_broken_release_inside_a_stack_is_rolled_back_and_the_db_untouched(
    compose_stack: Stack, smtp_server: SmtpServer, watches: list[WatchProcess], observed: Observed
) -> None:
    world = compose_stack.world
    world.use_smtp(smtp_server.host, smtp_server.port)
    world.releases.push("1.0.0", "healthcheck", health_url=DB_HEALTH_URL)
    world.releases.push("1.1.0", "broken")
    compose_stack.write("1.0.0")
    compose_stack.up()
    wait_for(lambda: world.served() == "1.0.0", timeout=60, what="the stack's web serving 1.0.0")
    db_before = compose_stack.db_identity()

    watch = WatchProcess(world.environ(CD_POLL_INTERVAL="1"), world.root)
    watches.append(watch)

    def quarantined() -> bool:
        assert watch.process.poll() is None, watch.log()[-3000:]
        return [q["version"] for q in state_json(world)["quarantined"]] == ["1.1.0"]

    wait_for(quarantined, timeout=180, what="1.1.0 quarantined")
    message = smtp_server.wait_for_messages(1, timeout=30)[-1]
    assert watch.stop() == 0

    assert message["Subject"].endswith("deploy of 1.1.0 failed: rolled back to 1.0.0"), message["Subject"]
    assert world.served() == "1.0.0"
    assert compose_stack.db_identity() == db_before
    assert not _pin(compose_stack).exists()
    (web,) = compose_stack.containers("web")
    assert web["Config"]["Image"] == f"{world.releases.repository}:1.0.0"
    status = state_json(world)
    assert version_of(status["current"]) == "1.0.0" and status["deploy_in_progress"] is None
    observed(f"db {db_before[0][:12]} started {db_before[1]} unchanged; web back on {web['Config']['Image']}; "
             f"email {message['Subject']!r}")


@pytest.mark.reliability(
    "The agent SIGKILLed in a deploy of 1.1.0 to the web service of a compose stack serving 1.0.0 (after the pin "
    "and `up`, before the verdict; or after the verdict), then `cd-agent watch` started",
    "the start-up reconcile puts the previous pin back (or keeps the proven one), the watcher deploys 1.1.0, which "
    "serves; the db is untouched, no run is left running, the killed run is interrupted, no journal",
)
@pytest.mark.parametrize("phase", ["created", "verdict"])
def test_a_compose_deploy_killed_half_way_is_reconciled_at_the_next_start(
    compose_stack: Stack, phase: str, watches: list[WatchProcess], observed: Observed
) -> None:
    world = compose_stack.world
    for version in ("1.0.0", "1.1.0"):
        world.releases.push(version, "healthcheck", health_url=DB_HEALTH_URL)
    compose_stack.write("1.0.0")
    compose_stack.up()
    wait_for(lambda: world.served() == "1.0.0", timeout=60, what="the stack's web serving 1.0.0")
    db_before = compose_stack.db_identity()

    said = killed_then_watched(world, phase, "1.1.0", watches)

    assert ("proven healthy, so it stays" in said) == (phase == "verdict"), said
    assert compose_stack.db_identity() == db_before
    assert ":1.1.0@sha256:" in _pin(compose_stack).read_text()
    with RunStore(world.target().paths.runs) as runs:
        history = [(r.version, r.status) for r in reversed(runs.list(limit=100)) if r.kind == "deploy"]
    assert not [entry for entry in history if entry[1] in ("running", "queued")], history
    assert history[0] == ("1.1.0", "interrupted"), history
    observed(f"killed at {phase}; on restart: {said.split('reconcile: ', 1)[1][:200]}; runs {history}")


BAD_INPUT = {
    "a missing file": ({"CD_COMPOSE_FILE": "/nonexistent/compose.yml"}, "no such compose file: /nonexistent"),
    "a service not in the file": ({"CD_COMPOSE_SERVICE": "api"}, "no service 'api' (its services: db, web, worker)"),
    "a service without image:": ({"CD_COMPOSE_SERVICE": "worker"}, "service 'worker' has no image:"),
}


@pytest.mark.reliability(
    "`cd-agent watch` with CD_STRATEGY=compose and bad compose input: a missing file, a service not in the file, "
    "a service without `image:`",
    "refused at start-up with exit 2 and a message naming the setting and what is wrong; no container of the stack "
    "touched, no pin file, no state written",
)
@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_compose_input_is_refused_at_start_up(compose_stack: Stack, case: str, observed: Observed) -> None:
    world = compose_stack.world
    world.releases.push("1.0.0", "healthcheck", health_url=DB_HEALTH_URL)
    compose_stack.write("1.0.0", web_extra="  worker:\n    build: ./worker\n")
    (compose_stack.folder / "worker").mkdir()  # compose 1.29 wants a build folder that exists, even unbuilt
    compose_stack.up("db", "web")
    before = sorted((c["Id"], c["State"]["StartedAt"]) for s in ("db", "web") for c in compose_stack.containers(s))
    settings, expected = BAD_INPUT[case]

    result = cd_agent("watch", environ=world.environ(**settings), cwd=world.root, timeout=60)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "CD_COMPOSE_" in result.stderr and expected in result.stderr, result.stderr
    after = sorted((c["Id"], c["State"]["StartedAt"]) for s in ("db", "web") for c in compose_stack.containers(s))
    assert after == before
    assert not (world.root / "state").exists()
    observed(f"exit 2: {result.stderr.strip().splitlines()[-1][:220]}")
