"""Seconds from push to served: the registry's push notification wakes the watcher's poll.

Every watcher here polls once an hour, so a release served within seconds was polled because of a hint.
"""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cd_apps import WatchProcess, state_json, version_of
from tests.support.notify_server import NotifyServer
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.registry_hints import HookedWorld, docker_hub_body

pytestmark = pytest.mark.docker


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics answer, keyed by name and sorted labels."""
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text) for sample in family.samples
    }


def test_a_push_to_the_notifying_registry_is_served_within_seconds(
    hooked_world: HookedWorld, watches: list[WatchProcess]
) -> None:
    world = hooked_world.world
    watch = hooked_world.start_watch()
    watches.append(watch)

    pushed = time.monotonic()
    world.releases.push("1.0.0")
    wait_for(lambda: world.served() == "1.0.0", timeout=60, what="1.0.0 served after the registry's notification")
    served_after = time.monotonic() - pushed
    assert served_after < 60, served_after  # the regular poll would come in an hour
    assert watch.lines("new release 1.0.0"), watch.log()[-3000:]

    world.releases.push("1.0.1")
    wait_for(lambda: world.served() == "1.0.1", timeout=60, what="1.0.1 served after the next notification")
    wait_for(lambda: version_of(state_json(world)["current"]) == "1.0.1", timeout=30, what="1.0.1 recorded")

    # What the deploys, polls and hints left in /metrics, read with Prometheus' own text parser.
    app, url = world.name, f"http://127.0.0.1:{hooked_world.listener_port}/metrics"
    deployed = ("picicd_cd_deploys_total", (("app", app), ("outcome", "deployed")))
    # counted when the deploy process has ended, a moment after it recorded the release
    wait_for(lambda: scrape(url).get(deployed) == 2, timeout=30, what="two deploys counted")
    samples = scrape(url)
    assert samples[("picicd_cd_deploy_duration_seconds_count", (("app", app),))] == 2
    assert samples[("picicd_cd_polls_total", (("app", app),))] >= 3  # the first poll and two early ones
    assert samples[("picicd_cd_poll_errors_total", (("app", app),))] == 0
    assert samples[("picicd_cd_hints_total", (("app", app),))] >= 2
    assert samples[("picicd_cd_early_polls_total", (("app", app),))] >= 2
    assert samples[("picicd_cd_deployed_info", (("app", app), ("version", "1.0.1")))] == 1
    assert samples[("picicd_cd_last_successful_poll_timestamp_seconds", (("app", app),))] > time.time() - 120
    assert watch.stop() == 0
    assert "Traceback" not in watch.log()


def test_docker_hubs_webhook_body_polls_the_app_and_calls_nothing_back(
    hooked_world: HookedWorld, watches: list[WatchProcess], notify_server: NotifyServer
) -> None:
    """The watcher listens on another port than the one the registry notifies: only the Docker Hub body arrives."""
    world = hooked_world.world
    hooked = HookedWorld(world, hooked_world.registry, free_port())
    watch = hooked.start_watch()
    watches.append(watch)
    world.releases.push("1.0.0")
    answer = httpx.post(
        hooked.hook_url,
        content=docker_hub_body(hooked.repository, f"http://127.0.0.1:{notify_server.port}/callback", "1.0.0"),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 202 and answer.json() == {"polling": [world.name]}
    wait_for(lambda: version_of(state_json(world)["current"]) == "1.0.0", timeout=60, what="1.0.0 deployed")
    assert notify_server.requests == []  # Docker Hub's callback_url was never called
    other = httpx.post(
        hooked.hook_url, content=docker_hub_body("someone/else", "http://127.0.0.1:9/cb", "2.0.0"),
    )
    assert other.status_code == 202 and other.json() == {"ignored": "no app watches someone/else"}
    assert watch.stop() == 0
