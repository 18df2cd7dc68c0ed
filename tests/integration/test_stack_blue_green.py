"""Zero downtime for a stack's web service (issue 20, part 3) against the real engine: ``db`` and a
``worker`` made by real compose, ``web`` run by the agent with blue-green on the project's network
(``CD_NETWORKS=PROJECT_default:web``), a client requesting the page every 20 ms on new connections (and
one keep-alive client). An upgrade and a bad release drop no request; the worker, which asks
``http://web:8080/`` every 50 ms, never reaches a colour that is not proven (``web`` is the proxy's alias
there: the stack's services go through the switch as users do); db and worker are untouched."""

from __future__ import annotations

import time

import pytest

from tests.support.compose_stack import Stack
from tests.support.polling import wait_for
from tests.support.switch_probe import SwitchProbe

pytestmark = pytest.mark.docker


def test_upgrading_web_in_a_stack_drops_no_request_and_the_worker_never_reaches_an_unproven_colour(
    compose_stack: Stack, caddy_image: str
) -> None:
    world = compose_stack.world
    world.releases.push("1.0.0", "stack")
    world.releases.push("1.1.0", "stack")
    # Serves its page, but its HEALTHCHECK never passes: what the worker must never be sent to.
    world.releases.push("1.2.0", "healthcheck", health_url="http://db:9/")
    compose_stack.blue_green_beside(caddy_image)
    deployer = world.deployer()
    assert deployer.deploy("1.0.0").outcome == "deployed"
    wait_for(lambda: world.served() == "1.0.0", timeout=30, what="1.0.0 behind the proxy")
    wait_for(lambda: "1.0.0" in compose_stack.worker_saw(), timeout=30, what="the worker reaching web")
    before = compose_stack.identities("db", "worker")

    with SwitchProbe(world.url, expected={"1.0.0", "1.1.0"}) as probe:
        marks = [("upgrade", time.monotonic())]
        report = deployer.deploy("1.1.0")
        assert report.outcome == "deployed", report
        probe.wait_for_body("1.1.0")
        marks.append(("bad release", time.monotonic()))
        report = deployer.deploy("1.2.0")
        assert (report.outcome, report.quarantined, report.failed_step) == ("rolled_back", True, "health"), report
        probe.wait_for_more(5)
        marks.append(("end", time.monotonic()))

    assert probe.failures == [], probe.explain(marks) + "\n" + compose_stack.proxy_said()
    assert probe.bodies("fresh") == ["1.0.0", "1.1.0"]
    wait_for(lambda: compose_stack.worker_saw()[-1] == "1.1.0", timeout=10, what="the worker reaching 1.1.0")
    saw = compose_stack.worker_saw()
    assert "1.2.0" not in saw, [(answer, saw.count(answer)) for answer in sorted(set(saw))]
    since = saw[saw.index("1.0.0"):]  # before the first deploy there was no web to reach ("-")
    assert set(since) <= {"1.0.0", "1.1.0"}, [(answer, since.count(answer)) for answer in sorted(set(since))]
    assert compose_stack.identities("db", "worker") == before
    assert deployer.state.quarantined_versions == {"1.2.0"}
    assert compose_stack.answering_to("web") == [f"{world.name}-proxy"]
