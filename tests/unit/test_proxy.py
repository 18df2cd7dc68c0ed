"""The proxy's pure part (Caddy's configuration, the state file) and the controller's decisions
over an in-memory engine. tests/integration/test_proxy.py proves the same against real Caddy."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from cd_agent.errors import EngineError, ProxyError
from cd_agent.proxy import (
    CONFIG_PATH,
    LABEL_PROXY,
    LABEL_PROXY_CONFIG,
    ProxyContainer,
    ProxyContainerSpec,
    ProxyController,
    ProxyStateFile,
    caddy_config,
    config_label,
    proxy_sysctls,
)
from cd_agent.proxy_ports import proxied_ports
from cd_agent.settings import parse_ports


def handlers(config: dict[str, Any], port: int) -> dict[str, dict[str, Any]]:
    route = config["apps"]["http"]["servers"][f"port{port}"]["routes"][0]
    return {handler["handler"]: handler for handler in route["handle"]}


def test_one_server_per_container_port_proxying_to_the_alias_on_the_same_port() -> None:
    config = caddy_config(parse_ports("127.0.0.1:8080:8080,9000:9000,127.0.0.1:8081:8080"), "app-b")

    servers = config["apps"]["http"]["servers"]
    assert sorted(servers) == ["port8080", "port9000"]
    assert servers["port8080"]["listen"] == [":8080"]
    handler = handlers(config, 9000)["reverse_proxy"]
    assert handler["upstreams"] == [{"dial": "app-b:9000"}]
    assert servers["port8080"]["automatic_https"] == {"disable": True}


def test_the_admin_api_stays_on_the_containers_loopback_and_caddy_keeps_no_second_copy() -> None:
    config = caddy_config(parse_ports("8080:80"), None)
    assert config["admin"] == {"listen": "localhost:2019", "config": {"persist": False}}


def test_no_upstream_answers_503() -> None:
    handler = handlers(caddy_config(parse_ports("8080:80"), None), 80)["static_response"]
    assert handler["status_code"] == 503


def test_responses_close_the_client_connection_unless_keepalive_is_asked_for() -> None:
    ports = parse_ports("8080:80")
    closing = handlers(caddy_config(ports, "a"), 80)
    assert closing["headers"]["response"]["set"] == {"Connection": ["close"]}
    assert list(closing) == ["headers", "reverse_proxy"]
    assert list(handlers(caddy_config(ports, "a", keepalive=True), 80)) == ["reverse_proxy"]


def test_queued_connections_migrate_on_reload_where_the_kernel_can(tmp_path: Path) -> None:
    assert proxy_sysctls(tmp_path) == {}
    (tmp_path / "net" / "ipv4").mkdir(parents=True)
    (tmp_path / "net" / "ipv4" / "tcp_migrate_req").write_text("0\n")
    assert proxy_sysctls(tmp_path) == {"net.ipv4.tcp_migrate_req": "1"}


def test_a_non_root_caddy_may_listen_on_any_port_where_the_kernel_can(tmp_path: Path) -> None:
    (tmp_path / "net" / "ipv4").mkdir(parents=True)
    (tmp_path / "net" / "ipv4" / "ip_unprivileged_port_start").write_text("1024\n")
    assert proxy_sysctls(tmp_path) == {"net.ipv4.ip_unprivileged_port_start": "0"}


def test_the_app_is_told_the_client_address_in_x_real_ip_whatever_the_client_sent() -> None:
    handler = handlers(caddy_config(parse_ports("8080:80"), "a"), 80)["reverse_proxy"]
    assert handler["headers"]["request"]["set"] == {"X-Real-Ip": ["{http.request.remote.host}"]}


def test_the_grace_period_bounds_how_long_old_requests_may_run() -> None:
    assert caddy_config(parse_ports("80"), "a", grace_period_s=2.5)["apps"]["http"]["grace_period"] == "2.5s"


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ("", "CD_PORTS is empty"),
        ("8080:80,5353:53/udp", r"5353:53/udp: the blue-green proxy forwards HTTP over TCP only.*CD_STRATEGY=swap"),
    ],
)
def test_ports_caddy_cannot_proxy_are_refused_by_name(ports: str, message: str) -> None:
    with pytest.raises(ProxyError, match=message):
        proxied_ports(parse_ports(ports))


def test_the_state_file_round_trips_and_starts_empty(tmp_path: Path) -> None:
    state = ProxyStateFile(tmp_path / "cd" / "proxy.json")
    assert state.upstream() is None
    state.set_upstream("app-green")
    assert ProxyStateFile(tmp_path / "cd" / "proxy.json").upstream() == "app-green"
    state.set_upstream(None)
    assert state.upstream() is None
    assert [p.name for p in (tmp_path / "cd").iterdir()] == ["proxy.json"]


@pytest.mark.parametrize("content", ["{not json", '{"upstream": 3}'])
def test_an_unreadable_state_file_is_an_error_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "proxy.json"
    path.write_text(content)
    with pytest.raises(ProxyError, match="proxy state .*proxy.json"):
        ProxyStateFile(path).upstream()
    assert path.read_text() == content


# The controller over an in-memory engine


@dataclass
class MemoryEngine:
    """Containers and networks as dicts; ``caddy`` decides what ``caddy reload`` answers."""

    containers: dict[str, ProxyContainer] = field(default_factory=dict)
    networks: set[str] = field(default_factory=set)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    loaded: list[bytes] = field(default_factory=list)
    caddy: Callable[[int], tuple[int, str]] = lambda attempt: (0, "")
    attempts: int = 0
    start_error: str = ""
    events: list[str] = field(default_factory=list)

    def container(self, name: str) -> ProxyContainer | None:
        return self.containers.get(name)

    def ensure_network(self, name: str, labels: Mapping[str, str]) -> None:
        self.networks.add(name)

    def remove_network(self, name: str) -> None:
        self.networks.discard(name)

    def create(self, spec: ProxyContainerSpec) -> None:
        self.events.append(f"create {spec.name} {spec.image}")
        self.containers[spec.name] = ProxyContainer(
            id=f"id-{len(self.events)}", name=spec.name, running=False, labels=dict(spec.labels),
            networks={spec.network: ""},
        )

    def start(self, name: str) -> None:
        self.events.append(f"start {name}")
        if self.start_error:
            raise EngineError(self.start_error, status=500)
        old = self.containers[name]
        self.containers[name] = replace(old, running=True)

    def remove(self, name: str) -> None:
        self.events.append(f"remove {name}")
        self.containers.pop(name, None)

    def connect(self, container: str, network: str, aliases: Sequence[str]) -> None:
        self.events.append(f"connect {container} {network} {list(aliases)}")
        old = self.containers.get(container)
        if old is None:
            return
        self.containers[container] = replace(
            old, networks={**old.networks, network: ""}, aliases={**old.aliases, network: tuple(aliases)}
        )

    def disconnect(self, container: str, network: str) -> None:
        self.events.append(f"disconnect {container} {network}")
        old = self.containers[container]
        self.containers[container] = replace(
            old, networks={k: v for k, v in old.networks.items() if k != network},
            aliases={k: v for k, v in old.aliases.items() if k != network},
        )

    def put_file(self, container: str, path: str, data: bytes) -> None:
        self.events.append(f"put {path}")
        self.files[(container, path)] = data

    def exec(self, container: str, argv: Sequence[str]) -> tuple[int, str]:
        self.attempts += 1
        code, output = self.caddy(self.attempts)
        if code == 0:
            self.loaded.append(self.files[(container, CONFIG_PATH)])
        return code, output

    def logs(self, container: str, tail: int) -> str:
        return "caddy's last words"


def controller(engine: MemoryEngine, tmp_path: Path, *, ports: str = "127.0.0.1:8080:8080") -> ProxyController:
    return ProxyController(
        engine, ProxyStateFile(tmp_path / "proxy.json"), app="shop", image="caddy:2", ports=parse_ports(ports),
        ready_timeout_s=1,
    )


def upstream_of(config: bytes) -> str:
    handler = handlers(json.loads(config), 8080).get("reverse_proxy", {"upstreams": [{"dial": "none"}]})
    return str(handler["upstreams"][0]["dial"])


def test_ensure_creates_the_proxy_with_its_configuration_in_place_before_the_first_start(tmp_path: Path) -> None:
    engine = MemoryEngine()
    controller(engine, tmp_path).ensure()

    assert engine.networks == {"shop-net"}
    assert engine.events[:3] == ["create shop-proxy caddy:2", f"put {CONFIG_PATH}", "start shop-proxy"]
    assert engine.containers["shop-proxy"].labels[LABEL_PROXY] == "shop"
    assert upstream_of(engine.loaded[-1]) == "none"


def test_ensure_applies_the_upstream_in_the_state(tmp_path: Path) -> None:
    ProxyStateFile(tmp_path / "proxy.json").set_upstream("shop-blue")
    engine = MemoryEngine()
    controller(engine, tmp_path).ensure()
    assert upstream_of(engine.loaded[-1]) == "shop-blue:8080"


def test_a_matching_proxy_is_adopted_not_recreated(tmp_path: Path) -> None:
    engine = MemoryEngine()
    controller(engine, tmp_path).ensure()
    engine.events.clear()

    controller(engine, tmp_path).ensure()
    assert not [event for event in engine.events if event.startswith(("create", "remove", "start"))]


def test_changed_ports_or_image_recreate_the_proxy(tmp_path: Path) -> None:
    engine = MemoryEngine()
    controller(engine, tmp_path).ensure()
    engine.events.clear()

    controller(engine, tmp_path, ports="127.0.0.1:9090:8080").ensure()
    assert engine.events[:2] == ["remove shop-proxy", "create shop-proxy caddy:2"]
    assert engine.containers["shop-proxy"].labels[LABEL_PROXY_CONFIG] == config_label(
        "caddy:2", parse_ports("127.0.0.1:9090:8080")
    )


def test_a_foreign_container_under_the_name_is_refused_and_left_alone(tmp_path: Path) -> None:
    engine = MemoryEngine(containers={"shop-proxy": ProxyContainer("x", "shop-proxy", True, {})})
    with pytest.raises(ProxyError, match="shop-proxy exists and is not pi-cicd's proxy"):
        controller(engine, tmp_path).ensure()
    assert engine.events == []


def test_switch_records_the_new_upstream_before_loading_it(tmp_path: Path) -> None:
    engine = MemoryEngine()
    proxy = controller(engine, tmp_path)
    proxy.ensure()
    engine.caddy = lambda attempt: (1, "Error: loading config: json: unknown field")

    with pytest.raises(ProxyError, match="refused the configuration: Error: loading config"):
        proxy.switch("shop-green")
    # The next ensure() (e.g. the agent restarted) converges to it.
    assert ProxyStateFile(tmp_path / "proxy.json").upstream() == "shop-green"


def test_loading_waits_while_caddy_is_starting(tmp_path: Path) -> None:
    refused = 'Error: sending configuration to instance: performing request: Post "http://localhost:2019/load": ' \
        "dial tcp 127.0.0.1:2019: connect: connection refused"
    engine = MemoryEngine(caddy=lambda attempt: (1, refused) if attempt < 3 else (0, ""))
    controller(engine, tmp_path).ensure()
    assert engine.attempts == 3
    assert len(engine.loaded) == 1


STOPPED = "OCI runtime exec failed: exec failed: cannot exec in a stopped container: unknown"


def test_a_caddy_that_exited_under_the_agent_is_waited_for_and_loaded_once_it_runs_again(tmp_path: Path) -> None:
    engine = MemoryEngine()
    proxy = controller(engine, tmp_path)
    proxy.ensure()
    engine.events.clear()
    # Its process exited just after the engine last saw it running; the restart policy brings it back.
    box = engine.containers["shop-proxy"]
    engine.containers["shop-proxy"] = replace(box, restarting=True)
    engine.attempts = 0

    def caddy(attempt: int) -> tuple[int, str]:
        if attempt <= 2:
            if attempt == 2:  # Docker started it again meanwhile
                engine.containers["shop-proxy"] = replace(box, restarting=False)
            return 126, STOPPED
        return 0, ""

    engine.caddy = caddy
    proxy.switch("shop-green")
    assert upstream_of(engine.loaded[-1]) == "shop-green:8080"
    assert not [event for event in engine.events if event.startswith("start")]  # Docker restarts it, not us


def test_a_proxy_stopped_for_good_is_started_again_with_the_new_configuration(tmp_path: Path) -> None:
    engine = MemoryEngine()
    proxy = controller(engine, tmp_path)
    proxy.ensure()
    engine.containers["shop-proxy"] = replace(engine.containers["shop-proxy"], running=False, state="exited")

    def caddy(attempt: int) -> tuple[int, str]:
        if not engine.containers["shop-proxy"].running:
            raise EngineError("docker exec caddy in container shop-proxy: Container 5d1f is not running (HTTP 409)")
        return 0, ""

    engine.caddy = caddy
    proxy.switch("shop-green")
    assert "start shop-proxy" in engine.events
    assert engine.files[("shop-proxy", CONFIG_PATH)] == engine.loaded[-1]  # what Caddy reads when it starts


def test_a_proxy_that_does_not_come_back_is_an_error_saying_how_it_ended_and_what_caddy_said(tmp_path: Path) -> None:
    engine = MemoryEngine()
    proxy = controller(engine, tmp_path)
    proxy.ensure()
    engine.containers["shop-proxy"] = replace(
        engine.containers["shop-proxy"], restarting=True, state="restarting, exit code 1, restarted 5 times"
    )
    engine.caddy = lambda attempt: (126, STOPPED)

    with pytest.raises(ProxyError) as raised:
        proxy.switch("shop-green")
    message = str(raised.value)
    assert "did not take the configuration within 1s" in message and "cannot exec in a stopped container" in message
    assert "exit code 1, restarted 5 times" in message and "caddy's last words" in message


def test_an_engine_refusal_other_than_a_stopped_container_is_not_waited_for(tmp_path: Path) -> None:
    engine = MemoryEngine()
    proxy = controller(engine, tmp_path)
    proxy.ensure()

    def gone(attempt: int) -> tuple[int, str]:
        raise EngineError("docker exec caddy in container shop-proxy: No such container: shop-proxy (HTTP 404)")

    engine.caddy = gone
    engine.attempts = 0
    with pytest.raises(ProxyError, match="cannot configure the proxy shop-proxy: .*No such container"):
        proxy.switch("shop-green")
    assert engine.attempts == 1


def test_a_proxy_it_creates_joins_the_stacks_networks_before_it_starts(tmp_path: Path) -> None:
    engine = MemoryEngine()
    controller(engine, tmp_path).ensure({"shop_default": ("web",), "shop-net": ("x",), "metrics": ()})

    # Docker gives the published ports to the first network in name order: set up once, at the start.
    assert engine.events[:4] == [
        "create shop-proxy caddy:2", f"put {CONFIG_PATH}", "connect shop-proxy shop_default ['web']", "start shop-proxy"
    ]
    engine.events.clear()
    controller(engine, tmp_path).ensure({"shop_default": ("web",)})  # adopted, running: left to serve_on
    assert not [event for event in engine.events if event.startswith(("connect", "disconnect"))]


def test_a_proxy_that_cannot_start_is_not_left_behind(tmp_path: Path) -> None:
    engine = MemoryEngine(start_error="docker start container shop-proxy: port is already allocated (HTTP 500)")
    with pytest.raises(ProxyError, match=r"cannot start the proxy shop-proxy publishing 127.0.0.1:8080:8080/tcp: .*"
                       "port is already allocated"):
        controller(engine, tmp_path).ensure()
    assert engine.containers == {}


def test_the_proxy_answers_to_the_apps_aliases_on_the_stacks_network_joined_once(tmp_path: Path) -> None:
    engine = MemoryEngine()
    proxy = controller(engine, tmp_path)
    proxy.ensure()

    assert proxy.serve_on({"shop_default": ("web",), "metrics": ()}) == ["shop_default"]
    assert proxy.serve_on({"shop_default": ("web",)}) == []  # no reconnect: its clients there keep their connections
    assert engine.containers["shop-proxy"].aliases["shop_default"] == ("web",)
    assert "metrics" not in engine.containers["shop-proxy"].networks  # no alias of the app there: nothing to answer

    assert proxy.serve_on({"shop_default": ("web", "shop")}) == ["shop_default"]  # the settings changed
    assert engine.events[-2:] == [
        "disconnect shop-proxy shop_default", "connect shop-proxy shop_default ['web', 'shop']"
    ]


def test_serving_on_a_stacks_network_without_the_proxy_names_it(tmp_path: Path) -> None:
    with pytest.raises(ProxyError, match="shop-proxy is gone"):
        controller(MemoryEngine(), tmp_path).serve_on({"shop_default": ("web",)})
