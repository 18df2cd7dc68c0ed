"""The blue-green deploy policy (``cd_agent/blue_green.py``) against the in-memory engine and proxy.

As in test_deploy_policy.py the deployer, state and run databases are real and only the engine (and
the proxy over it, ``FakeProxy``) and the clock are fake. The users' view is the proxy's: a request
succeeds when the proxy's upstream is a running container of a good release. ``watch`` checks that
view before every engine and proxy operation of a deploy, so "no failed request" is asserted at every
step, not only at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cd_agent.apps import single_target
from cd_agent.blue_green import LABEL_COLOUR, kept_name
from cd_agent.container_spec import LABEL_VERSION, ContainerSpec
from cd_agent.deployer import Deployer
from cd_agent.engine import NetworkAttachment
from cd_agent.errors import DeployError, ProxyError
from cd_agent.proxy import network_name
from cd_agent.settings import CdSettings
from cd_agent.stack_aliases import LABEL_ALIASES
from cd_agent.state import BLUE_GREEN_PHASES, DeployState, Phase
from shared.notify import Notifier
from shared.runstore import RunStore
from tests.support.fake_engine import Behaviour, FakeProxy
from tests.unit.test_deploy_policy import NAME, REPO, Killed, World, kill_at

GRACE = 3.0


class BlueGreenWorld(World):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.proxy = FakeProxy(self.engine, network_name(NAME))
        self.probed: list[str] = []

    def settings(self, **overrides: str) -> CdSettings:
        settings = super().settings(**overrides)
        return settings.model_copy(update={"cd_strategy": "blue-green", "cd_proxy_grace": GRACE})

    def deployer(
        self,
        on_phase: Callable[[Phase], None] | None = None,
        probe: Callable[[str, float], tuple[bool, str]] | None = None,
        **overrides: str,
    ) -> Deployer:
        target = single_target(self.settings(**overrides))
        deployer = Deployer(
            target, self.engine, DeployState(target.paths.state), RunStore(target.paths.runs),
            Notifier(self.mailer, attempts=1), monotonic=self.time.monotonic, sleep=self.time.sleep,
            probe=probe or self.probe, on_phase=on_phase, proxy=self.proxy, siblings=self.siblings,
        )
        self.opened.append(deployer)
        return deployer

    def probe(self, url: str, timeout: float) -> tuple[bool, str]:
        """The app answering at its own address: a good release that runs answers 200."""
        self.probed.append(url)
        box = self.engine.by_address(urlsplit(url).hostname or "")
        ok = box is not None and box.info.running and box.behaviour == "good" and not box.info.restart_count
        return ok, f"GET {url}: {'HTTP 200' if ok else 'connection refused'}"

    def users_see(self) -> str | None:
        """The version a user's request through the proxy gets, or None for a failed request."""
        info = self.proxy.serving()
        if info is None or info.restart_count or info.health_status not in (None, "healthy"):
            return None
        box = self.engine._find(info.id)
        if box is None or box.behaviour != "good":
            return None
        return info.labels.get(LABEL_VERSION)

    def watch(self) -> list[str | None]:
        """Records what users see before every operation from now on."""
        seen: list[str | None] = []

        def before(operation: str, target: str) -> None:
            seen.append(self.users_see())

        self.engine.before = before
        return seen

    def running_apps(self) -> list[str]:
        return sorted(box.info.name for box in self.engine.boxes.values() if box.info.running)


@pytest.fixture
def bg(tmp_path: Path) -> Iterator[BlueGreenWorld]:
    made = BlueGreenWorld(tmp_path)
    yield made
    made.close()


def deployed(world: BlueGreenWorld, *versions: str, **overrides: str) -> Deployer:
    deployer = world.deployer(None, None, **overrides)
    for version in versions:
        if f"{REPO}:{version}" not in world.engine.registry:
            world.push(version)
        assert deployer.deploy(version).outcome == "deployed"
    return deployer


# upgrades


def test_a_first_deploy_creates_the_proxy_and_runs_the_release_behind_it_publishing_nothing(
    bg: BlueGreenWorld,
) -> None:
    bg.push("1.0.0")
    deployer = bg.deployer()

    report = deployer.deploy("1.0.0")

    assert (report.outcome, report.previous) == ("deployed", None)
    assert bg.proxy.exists and bg.users_see() == "1.0.0"
    spec = bg.engine.created[-1]
    assert spec.ports == () and spec.network == network_name(NAME) and spec.networks[0].aliases == (f"{NAME}-blue",)
    assert bg.proxy.upstream() == f"{NAME}-blue" and bg.engine.names() == [NAME]
    current = deployer.state.current
    info = bg.engine.container(NAME)
    assert current is not None and info is not None and (current.version, current.container_id) == ("1.0.0", info.id)
    assert deployer.state.journal is None
    assert bg.emails(deployer)[-1].subject == "[app] deployed 1.0.0"


def test_an_upgrade_switches_only_a_proven_release_and_stops_the_old_one_after_the_grace_period(
    bg: BlueGreenWorld,
) -> None:
    deployer = deployed(bg, "1.0.0")
    old = bg.engine.container(NAME)
    assert old is not None
    bg.push("1.1.0")
    seen = bg.watch()
    stopped_after: list[float] = []
    watching = bg.engine.before

    def before(operation: str, target: str) -> None:
        watching(operation, target)
        if operation == "proxy_switch":
            stopped_after.append(bg.time.now)
        if operation == "stop":
            stopped_after.append(bg.time.now)

    bg.engine.before = before

    report = deployer.deploy("1.1.0")

    assert (report.outcome, report.previous, report.downtime_s) == ("deployed", "1.0.0", 0.0)
    assert None not in seen and seen[0] == "1.0.0" and bg.users_see() == "1.1.0"
    switched_at, stopped_at = stopped_after
    assert stopped_at - switched_at >= GRACE
    assert bg.proxy.upstream() == f"{NAME}-green" and bg.running_apps() == [NAME]
    kept = bg.engine.container(kept_name(NAME))
    assert kept is not None and kept.id == old.id and not kept.running and kept.labels[LABEL_VERSION] == "1.0.0"
    previous = deployer.state.previous
    assert previous is not None and previous.version == "1.0.0"


def test_the_health_url_is_asked_of_the_new_container_itself_on_its_container_port(bg: BlueGreenWorld) -> None:
    deployer = deployed(bg, "1.0.0", CD_PORTS="127.0.0.1:9090:8080", CD_HEALTH_URL="http://127.0.0.1:9090/health")
    bg.push("1.1.0")
    bg.probed.clear()

    assert deployer.deploy("1.1.0").outcome == "deployed"

    new = bg.engine._find(NAME)
    assert new is not None
    assert bg.probed and set(bg.probed) == {f"http://{bg.engine.address(new)}:8080/health"}


def test_three_upgrades_alternate_colours_and_keep_one_stopped_previous(bg: BlueGreenWorld) -> None:
    deployed(bg, "1.0.0", "1.1.0", "1.2.0")

    assert bg.engine.names() == [NAME, kept_name(NAME)]
    serving, kept = bg.engine.container(NAME), bg.engine.container(kept_name(NAME))
    assert serving is not None and kept is not None
    assert (serving.labels[LABEL_COLOUR], kept.labels[LABEL_COLOUR]) == ("blue", "green")
    assert kept.labels[LABEL_VERSION] == "1.1.0" and bg.users_see() == "1.2.0"


# releases that fail


@pytest.mark.parametrize(
    ("behaviour", "healthcheck", "step"),
    [("exits", False, "health"), ("unhealthy", True, "health"), ("never_healthy", True, "health"),
     ("refuses_start", False, "start")],
)
def test_a_broken_release_never_reaches_users_and_is_quarantined(
    bg: BlueGreenWorld, behaviour: Behaviour, healthcheck: bool, step: str
) -> None:
    deployer = deployed(bg, "1.0.0", "1.1.0")
    bg.push("1.2.0", behaviour, healthcheck=healthcheck)
    seen = bg.watch()
    operations: list[tuple[str, str]] = []
    watching = bg.engine.before

    def before(operation: str, target: str) -> None:
        watching(operation, target)
        operations.append((operation, target))

    bg.engine.before = before

    report = deployer.deploy("1.2.0")

    assert (report.outcome, report.failed_step, report.quarantined) == ("rolled_back", step, True)
    assert set(seen) == {"1.1.0"} and bg.users_see() == "1.1.0"
    assert not [op for op in operations if op[0] in ("stop", "proxy_switch")]
    assert bg.running_apps() == [NAME] and bg.engine.names() == [NAME, kept_name(NAME)]
    kept = bg.engine.container(kept_name(NAME))
    assert kept is not None and kept.labels[LABEL_VERSION] == "1.0.0"  # still there to roll back to
    assert deployer.state.is_quarantined("1.2.0") and deployer.state.journal is None
    current = deployer.state.current
    assert current is not None and current.version == "1.1.0"
    email = bg.emails(deployer)[-1]
    assert "1.2.0" in email.subject


def test_ten_broken_releases_in_a_row_never_reach_users(bg: BlueGreenWorld) -> None:
    deployer = deployed(bg, "1.0.0")
    seen = bg.watch()
    for patch in range(1, 11):
        bg.push(f"1.0.{patch}", "exits")
        assert deployer.deploy(f"1.0.{patch}").outcome == "rolled_back"
    assert set(seen) == {"1.0.0"} and len(deployer.state.quarantined) == 10


def test_a_proxy_that_cannot_be_set_up_fails_the_deploy_before_anything_is_created(bg: BlueGreenWorld) -> None:
    bg.push("1.0.0")

    def refuse(operation: str, target: str) -> None:
        if operation == "proxy_ensure":
            raise ProxyError("cannot start the proxy app-proxy publishing 127.0.0.1:8080:8080/tcp: port is taken")

    bg.engine.before = refuse
    deployer = bg.deployer()

    report = deployer.deploy("1.0.0")

    assert (report.outcome, report.failed_step) == ("failed", "proxy") and "port is taken" in (report.error or "")
    assert bg.engine.boxes == {} and not deployer.state.is_quarantined("1.0.0")


def test_a_container_from_the_swap_strategy_is_refused_by_name_and_left_alone(bg: BlueGreenWorld) -> None:
    foreign = bg.engine.run_foreign(NAME, "example/app:0.9.0")
    bg.push("1.0.0")
    deployer = bg.deployer()

    report = deployer.deploy("1.0.0")

    assert (report.outcome, report.failed_step) == ("failed", "prepare")
    assert "not behind the blue-green proxy" in (report.error or "")
    info = bg.engine.container(NAME)
    assert info is not None and info.id == foreign and info.running and bg.engine.names() == [NAME]


# rollback


def test_rollback_switches_back_to_the_kept_container_without_creating_one(bg: BlueGreenWorld) -> None:
    deployer = deployed(bg, "1.0.0", "1.1.0")
    kept = bg.engine.container(kept_name(NAME))
    assert kept is not None
    created = len(bg.engine.created)
    seen = bg.watch()

    report = deployer.rollback()

    assert (report.outcome, report.version, report.previous) == ("deployed", "1.0.0", "1.1.0")
    assert len(bg.engine.created) == created and None not in seen
    serving = bg.engine.container(NAME)
    assert serving is not None and serving.id == kept.id and bg.users_see() == "1.0.0"
    now_kept = bg.engine.container(kept_name(NAME))
    assert now_kept is not None and now_kept.labels[LABEL_VERSION] == "1.1.0" and not now_kept.running
    assert deployer.state.is_quarantined("1.1.0")
    # and forward again: 1.1.0 is quarantined, so only by force, and warm too
    assert deployer.deploy("1.1.0", force=True).outcome == "deployed"
    assert len(bg.engine.created) == created and bg.users_see() == "1.1.0"


# crash recovery


UNPROVEN = [p for p in BLUE_GREEN_PHASES if p in ("bg_pulled", "bg_created", "bg_started")]
PROVEN = [p for p in BLUE_GREEN_PHASES if p not in UNPROVEN]


@pytest.mark.parametrize("phase", UNPROVEN)
def test_killed_before_the_verdict_the_old_one_keeps_serving_and_the_new_one_goes(
    bg: BlueGreenWorld, phase: Phase
) -> None:
    deployed(bg, "1.0.0")
    bg.push("1.1.0")
    seen = bg.watch()
    with pytest.raises(Killed):
        bg.deployer(on_phase=kill_at(phase)).deploy("1.1.0")
    deployer = bg.deployer()

    said = deployer.reconcile()

    assert "undid the interrupted blue-green deploy of 1.1.0" in said and f"reached {phase!r}" in said
    assert set(seen) == {"1.0.0"} and bg.users_see() == "1.0.0"
    assert bg.running_apps() == [NAME] and bg.engine.names() == [NAME]
    current, info = deployer.state.current, bg.engine.container(NAME)
    assert current is not None and info is not None and (current.version, current.container_id) == ("1.0.0", info.id)
    assert deployer.state.journal is None and deployer.runs.list(limit=1)[0].status == "interrupted"
    assert deployer.deploy("1.1.0").outcome == "deployed"


@pytest.mark.parametrize("phase", PROVEN)
def test_killed_after_the_verdict_the_proven_release_is_switched_to_and_recorded(
    bg: BlueGreenWorld, phase: Phase
) -> None:
    deployed(bg, "1.0.0")
    bg.push("1.1.0")
    seen = bg.watch()
    with pytest.raises(Killed):
        bg.deployer(on_phase=kill_at(phase)).deploy("1.1.0")
    deployer = bg.deployer()

    said = deployer.reconcile()

    assert said.startswith("finished the interrupted blue-green deploy of 1.1.0")
    assert None not in seen and bg.users_see() == "1.1.0"
    assert bg.running_apps() == [NAME] and bg.engine.names() == [NAME, kept_name(NAME)]
    current, previous, info = deployer.state.current, deployer.state.previous, bg.engine.container(NAME)
    assert current is not None and info is not None and (current.version, current.container_id) == ("1.1.0", info.id)
    assert previous is not None and previous.version == "1.0.0" and deployer.state.journal is None


@pytest.mark.parametrize("phase", ["bg_pulled", "bg_created", "bg_started", "bg_proven", "bg_switched"])
def test_killed_during_a_first_deploy(bg: BlueGreenWorld, phase: Phase) -> None:
    bg.push("1.0.0")
    with pytest.raises(Killed):
        bg.deployer(on_phase=kill_at(phase)).deploy("1.0.0")
    deployer = bg.deployer()

    said = deployer.reconcile()

    if phase in PROVEN:
        assert bg.users_see() == "1.0.0" and bg.engine.names() == [NAME]
    else:
        assert "first deploy of 1.0.0" in said and bg.engine.names() == [] and deployer.state.current is None
    assert deployer.deploy("1.0.0").outcome in ("deployed", "noop")
    assert bg.users_see() == "1.0.0"


def test_killed_between_create_and_its_journal_entry_the_container_is_found_by_its_run_label(
    bg: BlueGreenWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed(bg, "1.0.0")
    bg.push("1.1.0")
    create = bg.engine.create

    def create_then_die(spec: ContainerSpec) -> str:
        create(spec)
        raise Killed("after create")

    monkeypatch.setattr(bg.engine, "create", create_then_die)
    with pytest.raises(Killed):
        bg.deployer().deploy("1.1.0")
    monkeypatch.undo()
    assert len(bg.engine.boxes) == 2

    said = bg.deployer().reconcile()

    assert "undid" in said and bg.users_see() == "1.0.0" and bg.engine.names() == [NAME]


def test_reconcile_points_a_proxy_that_lost_its_upstream_back_at_the_serving_container(bg: BlueGreenWorld) -> None:
    deployer = deployed(bg, "1.0.0", "1.1.0")
    bg.proxy.upstream_alias = None  # proxy.json deleted by hand, say

    said = deployer.reconcile()

    assert f"the proxy now sends traffic to {NAME}" in said and bg.users_see() == "1.1.0"
    assert "the proxy sends traffic to" in deployer.reconcile()


def test_a_swap_journal_is_not_touched_by_blue_green_and_vice_versa(bg: BlueGreenWorld) -> None:
    bg.push("1.0.0")
    with pytest.raises(Killed):
        bg.deployer(on_phase=kill_at("bg_started")).deploy("1.0.0")
    settings = World.settings(bg)  # the same state, the agent started with CD_STRATEGY=swap
    target = single_target(settings)
    swap = Deployer(
        target, bg.engine, DeployState(target.paths.state), RunStore(target.paths.runs),
        Notifier(bg.mailer, attempts=1),
    )
    bg.opened.append(swap)

    with pytest.raises(DeployError, match="belongs to another CD_STRATEGY"):
        swap.reconcile()


def test_a_release_that_exits_while_its_address_is_asked_is_judged_unhealthy_not_an_agent_error(
    bg: BlueGreenWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployer = deployed(bg, "1.0.0", CD_HEALTH_URL="http://127.0.0.1:8080/")
    bg.push("1.1.0", "exits")
    address = bg.proxy.address

    def gone_meanwhile(container: str) -> str:
        box = bg.engine._find(container)
        assert box is not None
        box.info = replace(box.info, running=False, status="exited", exit_code=3)
        return address(container)

    monkeypatch.setattr(bg.proxy, "address", gone_meanwhile)

    report = deployer.deploy("1.1.0")

    assert (report.outcome, report.failed_step, report.quarantined) == ("rolled_back", "health", True)
    assert "exited" in (report.error or "") and bg.users_see() == "1.0.0"


# stacks


def stack_aliases(bg: BlueGreenWorld, name: str) -> tuple[str, ...]:
    """What ``name`` answers to on the stack's network (``shop_default``)."""
    box = bg.engine._find(name)
    assert box is not None
    return next(a.aliases for a in box.info.networks if a.network == "shop_default")


def holders_of_web(bg: BlueGreenWorld) -> list[str]:
    """The app containers answering to ``web`` themselves on the stack's network."""
    return [
        box.info.name for box in bg.engine.boxes.values()
        if any("web" in a.aliases for a in box.info.networks if a.network == "shop_default")
    ]


def test_each_colour_joins_the_apps_networks_under_its_colour_and_the_proxy_answers_to_web(
    bg: BlueGreenWorld,
) -> None:
    bg.engine.networks.add("shop_default")

    deployed(bg, "1.0.0", CD_NETWORKS="shop_default:web")
    deployed(bg, "1.0.1", CD_NETWORKS="shop_default:web")

    blue, green = bg.engine.created[-2:]
    # Each colour answers only to its colour on the stack's network: it reaches the database, but the
    # stack's services asking for `web` reach the proxy, which sends them to the proven release only.
    assert blue.networks == (
        NetworkAttachment(network_name(NAME), (f"{NAME}-blue",)), NetworkAttachment("shop_default", (f"{NAME}-blue",))
    )
    assert green.networks == (
        NetworkAttachment(network_name(NAME), (f"{NAME}-green",)),
        NetworkAttachment("shop_default", (f"{NAME}-green",)),
    )
    assert bg.users_see() == "1.0.1"
    assert bg.proxy.stack_aliases == {"shop_default": ("web",)}
    assert holders_of_web(bg) == []
    # The app's aliases outlive the settings in the colour's label: a third deploy still serves `web`.
    bg.proxy.stack_aliases.clear()
    deployed(bg, "1.0.2")
    assert bg.proxy.stack_aliases == {"shop_default": ("web",)} and holders_of_web(bg) == []


def test_the_proxy_takes_web_at_the_first_deploy_before_its_switch_and_no_colour_ever_answers_to_it(
    bg: BlueGreenWorld,
) -> None:
    bg.engine.networks.add("shop_default")
    operations: list[str] = []
    holders: list[list[str]] = []
    upstreams: list[str | None] = []

    def before(operation: str, target: str) -> None:
        operations.append(operation)
        holders.append(holders_of_web(bg))
        upstreams.append(bg.proxy.upstream_alias)

    bg.engine.before = before
    deployer = deployed(bg, "1.0.0", CD_NETWORKS="shop_default:web")
    # Joined while the proxy still answers 503: Docker may move its published ports to the network it joins.
    joined = operations.index("proxy_serve_on", operations.index("proxy_ensure") + 1)
    assert joined < operations.index("proxy_switch") and upstreams[joined] is None
    bg.push("1.1.0", "exits")
    assert deployer.deploy("1.1.0").outcome == "rolled_back"
    bg.push("1.0.1")
    assert deployer.deploy("1.0.1").outcome == "deployed"
    assert deployer.rollback().outcome == "deployed"  # the kept colour restarts unproven: still not `web`
    assert bg.users_see() == "1.0.0"
    assert holders and all(seen == [] for seen in holders)
    assert bg.proxy.stack_aliases == {"shop_default": ("web",)}


def test_a_proxy_re_created_beside_a_serving_colour_joins_the_stack_before_it_starts(bg: BlueGreenWorld) -> None:
    bg.engine.networks.add("shop_default")
    deployer = deployed(bg, "1.0.0", CD_NETWORKS="shop_default:web")
    bg.proxy.exists = False  # removed by hand, or re-created for a new CD_PROXY_IMAGE
    bg.proxy.stack_aliases.clear()
    seen: list[tuple[str, dict[str, tuple[str, ...]]]] = []
    bg.engine.before = lambda operation, target: seen.append((operation, dict(bg.proxy.stack_aliases)))

    bg.push("1.0.1")
    assert deployer.deploy("1.0.1").outcome == "deployed"

    # Its ensure() was given the serving colour's aliases: joined before the proxy's start, not live after it.
    first_join = next(aliases for operation, aliases in seen if operation == "proxy_serve_on")
    assert first_join == {"shop_default": ("web",)}


def test_a_colour_that_answered_to_web_itself_drops_it_once_the_proxy_has_it_before_it_stops(
    bg: BlueGreenWorld,
) -> None:
    bg.engine.networks.add("shop_default")
    deployer = deployed(bg, "1.0.0", CD_NETWORKS="shop_default:web")
    # As a colour made before the proxy answered for the app (no label, `web` on the colour itself).
    box = bg.engine._find(NAME)
    assert box is not None
    networks = tuple(
        replace(a, aliases=(f"{NAME}-blue", "web")) if a.network == "shop_default" else a for a in box.info.networks
    )
    labels = {k: v for k, v in box.info.labels.items() if k != LABEL_ALIASES}
    box.info = replace(box.info, networks=networks, labels=labels)
    bg.proxy.stack_aliases.clear()
    seen: list[tuple[str, list[str]]] = []
    bg.engine.before = lambda operation, target: seen.append((operation, holders_of_web(bg)))

    bg.push("1.0.1")
    assert deployer.deploy("1.0.1").outcome == "deployed"

    assert bg.proxy.stack_aliases == {"shop_default": ("web",)}
    assert holders_of_web(bg) == []
    stop = [operation for operation, _ in seen].index("stop")
    assert seen[stop][1] == []  # dropped before it stops: the worker is not sent to an exiting process
    assert "proxy_serve_on" in [operation for operation, _ in seen[:stop]]


def test_a_static_address_is_refused_before_the_running_colour_is_touched(bg: BlueGreenWorld) -> None:
    deployer = deployed(bg, "1.0.0")
    box = bg.engine._find(NAME)
    assert box is not None
    bg.engine.networks.add("shop_default")
    fixed = NetworkAttachment("shop_default", ("web",), ipv4_address="10.1.0.5")
    box.info = replace(box.info, networks=(*box.info.networks, fixed))  # `docker network connect --ip` by hand
    bg.push("1.0.1")

    report = deployer.deploy("1.0.1")

    assert (report.outcome, report.failed_step) == ("failed", "prepare")
    assert "shop_default (10.1.0.5)" in (report.error or "") and bg.users_see() == "1.0.0"
    assert bg.engine.names() == [NAME]


@pytest.mark.parametrize("phase", ["bg_started", *PROVEN])
def test_killed_mid_deploy_in_a_stack_web_ends_on_the_proxy_only(bg: BlueGreenWorld, phase: Phase) -> None:
    bg.engine.networks.add("shop_default")
    deployed(bg, "1.0.0", CD_NETWORKS="shop_default:web")
    bg.push("1.1.0")
    with pytest.raises(Killed):
        bg.deployer(on_phase=kill_at(phase), CD_NETWORKS="shop_default:web").deploy("1.1.0")
    bg.proxy.stack_aliases.clear()  # as a proxy re-created since

    bg.deployer(CD_NETWORKS="shop_default:web").reconcile()

    serving = bg.engine.container(NAME)
    assert serving is not None and serving.running
    expected = "1.0.0" if phase == "bg_started" else "1.1.0"
    assert serving.labels[LABEL_VERSION] == expected and bg.users_see() == expected
    assert bg.proxy.stack_aliases == {"shop_default": ("web",)}
    assert holders_of_web(bg) == []
