"""A bad release of a stack's web service under blue-green, and the agent killed mid-deploy (issue 20,
part 3): ``db`` and ``worker`` made by real compose, ``web`` run by the agent on the project's network, a
client requesting the page every 20 ms on new connections (and a keep-alive one) throughout."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.support.cd_apps import WatchProcess, killed_then_watched, state_json, version_of
from tests.support.compose_stack import Stack
from tests.support.polling import wait_for
from tests.support.smtp_server import SmtpServer
from tests.support.switch_probe import SwitchProbe

pytestmark = pytest.mark.docker

Observed = Callable[[str], None]


@pytest.mark.reliability(
    "A bad web release inside a stack (db + worker by compose, web on the project's network) under blue-green,"
    " a client requesting the page every 20 ms on new connections",
    "0 failed requests; rolled back, quarantined, reported as rolled back (email, status, run log), never as"
    " deployed; db and worker untouched (same containers, never restarted); the worker, asking web by its alias,"
    " never reaches the bad release",
)
def test_a_bad_web_release_inside_a_stack_under_blue_green(
    compose_stack: Stack, caddy_image: str, smtp_server: SmtpServer, observed: Observed
) -> None:
    world = compose_stack.world
    world.use_smtp(smtp_server.host, smtp_server.port)
    world.releases.push("1.0.0", "stack")
    world.releases.push("1.1.0", "healthcheck", health_url="http://db:9/")  # serves, never healthy
    compose_stack.blue_green_beside(caddy_image)
    deployer = world.deployer()
    assert deployer.deploy("1.0.0").outcome == "deployed"
    smtp_server.wait_for_messages(1, timeout=30)
    wait_for(lambda: "1.0.0" in compose_stack.worker_saw(), timeout=30, what="the worker reaching web")
    before = compose_stack.identities("db", "worker")

    with SwitchProbe(world.url, expected={"1.0.0"}) as probe:
        started = time.monotonic()
        report = deployer.deploy("1.1.0")
        took = time.monotonic() - started
        probe.wait_for_more(5)

    assert (report.outcome, report.quarantined, report.failed_step) == ("rolled_back", True, "health"), report
    assert probe.failures == [], probe.explain() + "\n" + compose_stack.proxy_said()
    message = smtp_server.wait_for_messages(2, timeout=30)[-1]
    assert message["Subject"].endswith("deploy of 1.1.0 failed: rolled back to 1.0.0"), message["Subject"]
    status = state_json(world)
    assert version_of(status["current"]) == "1.0.0" and status["deploy_in_progress"] is None
    assert [q["version"] for q in status["quarantined"]] == ["1.1.0"]
    (run_log,) = [path for path in (world.root / "logs").rglob("*run-0002.log")]
    text = run_log.read_text()
    assert "rolled_back" in text or "rolled back" in text, text[-2000:]
    assert "deployed 1.1.0" not in text
    assert world.served() == "1.0.0"
    saw = compose_stack.worker_saw()
    assert "1.1.0" not in saw, saw
    since = saw[saw.index("1.0.0"):]  # before the first deploy there was no web to reach ("-")
    assert set(since) == {"1.0.0"}, [(answer, since.count(answer)) for answer in sorted(set(since))]
    assert compose_stack.identities("db", "worker") == before
    samples = len(probe.samples)
    observed(
        f"{samples} requests during the {took:.1f}s deploy, 0 failed, longest gap "
        f"{probe.max_gap('fresh') * 1000:.0f} ms; email {message['Subject']!r}; worker saw only 1.0.0 "
        f"({len(since)} answers); db and worker same containers and start times"
    )


@pytest.mark.reliability(
    "The agent SIGKILLed in a blue-green deploy of 1.1.0 to a stack's web serving 1.0.0 (db + worker by compose;"
    " the new colour started, not yet proven; or switched to, the old one not yet retired), then `cd-agent watch`"
    " started, a client requesting the page every 20 ms on new connections throughout",
    "0 failed requests for users and for the worker (which asks web by its alias); the start-up reconcile"
    " removes the unproven colour (or finishes the proven one's switch), the watcher deploys 1.1.0; web stays"
    " the proxy's alias on the project's network, no colour answers to it; db and worker untouched",
)
@pytest.mark.parametrize("phase", ["bg_started", "bg_switched"])
def test_a_blue_green_deploy_in_a_stack_killed_half_way_drops_no_request(
    compose_stack: Stack, caddy_image: str, phase: str, watches: list[WatchProcess], observed: Observed
) -> None:
    world = compose_stack.world
    world.releases.push("1.0.0", "stack")
    world.releases.push("1.1.0", "stack")
    compose_stack.blue_green_beside(caddy_image)
    assert world.deployer().deploy("1.0.0").outcome == "deployed"
    wait_for(lambda: "1.0.0" in compose_stack.worker_saw(), timeout=30, what="the worker reaching web")
    before = compose_stack.identities("db", "worker")

    with SwitchProbe(world.url, expected={"1.0.0", "1.1.0"}) as probe:
        said = killed_then_watched(world, phase, "1.1.0", watches)
        probe.wait_for_body("1.1.0")
        probe.wait_for_more(5)

    assert probe.failures == [], probe.explain() + "\n" + compose_stack.proxy_said()
    wait_for(lambda: compose_stack.worker_saw()[-1] == "1.1.0", timeout=10, what="the worker reaching 1.1.0")
    saw = compose_stack.worker_saw()
    since = saw[saw.index("1.0.0"):]
    assert set(since) <= {"1.0.0", "1.1.0"}, [(answer, since.count(answer)) for answer in sorted(set(since))]
    assert compose_stack.answering_to("web") == [f"{world.name}-proxy"]
    assert compose_stack.identities("db", "worker") == before
    observed(
        f"killed at {phase}; {len(probe.samples)} requests, 0 failed; the worker's {len(since)} answers all"
        f" 1.0.0/1.1.0; on restart: {said.split('reconcile: ', 1)[1][:160]}"
    )
