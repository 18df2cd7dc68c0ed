from __future__ import annotations

from pathlib import Path

import pytest

from cd_agent.settings import (
    CdSettings,
    NetworkJoin,
    PortMapping,
    VolumeMount,
    parse_networks,
    parse_ports,
    parse_volumes,
)
from shared.errors import SettingsError
from shared.settings import load_settings

BASE = {"CD_IMAGE": "127.0.0.1:5000/owner/app", "CD_CONTAINER_NAME": "app"}


def load(**overrides: str) -> CdSettings:
    return load_settings(CdSettings, {**BASE, **overrides})


def test_defaults():
    settings = load()
    assert settings.cd_poll_interval == 60
    assert settings.cd_state_flush_interval == 900
    assert settings.cd_keep_images == 3
    assert settings.cd_restart_policy == "unless-stopped"
    assert settings.cd_health_timeout == 60
    assert settings.cd_allow_prerelease is False
    assert parse_ports(settings.cd_ports) == []
    assert parse_volumes(settings.cd_volumes) == []
    assert settings.constraint is None
    assert settings.cd_env_file is None
    assert settings.log_dir == Path("logs/cd")
    assert settings.state_dir == Path("state/cd")
    assert settings.image.registry == "127.0.0.1:5000"
    assert settings.image.repository == "owner/app"


def test_docker_hub_image():
    assert load(CD_IMAGE="owner/app").image.name == "docker.io/owner/app"


@pytest.mark.parametrize("missing", ["CD_IMAGE", "CD_CONTAINER_NAME"])
def test_required(missing):
    environ = {key: value for key, value in BASE.items() if key != missing}
    with pytest.raises(SettingsError, match=f"{missing} is required"):
        load_settings(CdSettings, environ)


def test_ports():
    settings = load(CD_PORTS="8080:80, 127.0.0.1:8443:443/tcp,[::1]:5353:53/udp,9000")
    assert parse_ports(settings.cd_ports) == [
        PortMapping(host_ip=None, host_port=8080, container_port=80, protocol="tcp"),
        PortMapping(host_ip="127.0.0.1", host_port=8443, container_port=443, protocol="tcp"),
        PortMapping(host_ip="::1", host_port=5353, container_port=53, protocol="udp"),
        PortMapping(host_ip=None, host_port=None, container_port=9000, protocol="tcp"),
    ]
    assert parse_ports(settings.cd_ports)[2].container_key == "53/udp"


def test_volumes():
    settings = load(CD_VOLUMES="data:/data,/srv/cfg:/cfg:ro, logs:/var/log:rw")
    assert parse_volumes(settings.cd_volumes) == [
        VolumeMount(source="data", target="/data", read_only=False, is_named=True),
        VolumeMount(source="/srv/cfg", target="/cfg", read_only=True, is_named=False),
        VolumeMount(source="logs", target="/var/log", read_only=False, is_named=True),
    ]


def test_empty_values_mean_unset():
    settings = load(CD_PORTS="", CD_VOLUMES="", CD_HEALTH_URL="", CD_VERSION_CONSTRAINT="", CD_ENV_FILE="")
    assert parse_ports(settings.cd_ports) == []
    assert parse_volumes(settings.cd_volumes) == []
    assert settings.cd_health_url is None
    assert settings.constraint is None
    assert settings.cd_env_file is None


def test_constraint_parsed():
    constraint = load(CD_VERSION_CONSTRAINT="<1.0.0").constraint
    assert constraint is not None
    assert constraint.allows("0.9.1")
    assert not constraint.allows("1.0.0")


def test_env_file_must_exist(tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text("A=1\n")
    assert load(CD_ENV_FILE=str(env_file)).cd_env_file == env_file
    with pytest.raises(SettingsError, match=r"CD_ENV_FILE=.*no such file"):
        load(CD_ENV_FILE=str(tmp_path / "missing.env"))


def test_env_file_must_be_utf8(tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_bytes(b"A=1\nGREETING=gr\xfc\xdfe\n")  # Latin-1
    with pytest.raises(SettingsError, match=r"CD_ENV_FILE=.*is not UTF-8 text \(byte 0xfc on line 2\)"):
        load(CD_ENV_FILE=str(env_file))


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CD_PORTS", "8080:80,80:abc", r"CD_PORTS=.*'80:abc' is not"),
        ("CD_PORTS", "70000:80", r"CD_PORTS=.*'70000:80': port 70000 is not between 1 and 65535"),
        ("CD_PORTS", "8080:80/icmp", r"CD_PORTS=.*protocol 'icmp'"),
        ("CD_PORTS", "127.0.0.1:80", r"CD_PORTS=.*needs a host port"),
        ("CD_PORTS", "8080:80:90", r"CD_PORTS=.*'8080' is not an IP address"),
        ("CD_PORTS", "localhost:8080:80", r"CD_PORTS=.*'localhost' is not an IP address"),
        ("CD_PORTS", "8080:80,8080:81", r"CD_PORTS=.*published twice"),
        ("CD_VOLUMES", "data", r"CD_VOLUMES=.*'data' is not SOURCE:TARGET"),
        ("CD_VOLUMES", "data:/data:rx", r"CD_VOLUMES=.*mode 'rx'"),
        ("CD_VOLUMES", "data:relative", r"CD_VOLUMES=.*must be absolute"),
        ("CD_VOLUMES", "./cfg:/cfg", r"CD_VOLUMES=.*relative host paths are not accepted"),
        ("CD_VOLUMES", "aa:/x,bb:/x", r"CD_VOLUMES=.*'/x' is mounted twice"),
        ("CD_NETWORKS", "shop_default:web,shop_default:api", r"CD_NETWORKS=.*'shop_default' is named twice"),
        ("CD_NETWORKS", "shop default", r"CD_NETWORKS=.*'shop default' is not a network name"),
        ("CD_NETWORKS", "shop:web:we b", r"CD_NETWORKS=.*'we b' is not an alias"),
        ("CD_NETWORKS", "shop::web", r"CD_NETWORKS=.*'' is not an alias"),
        ("CD_NETWORKS", "host", r"CD_NETWORKS=.*'host' network mode is not a network to join"),
        ("CD_NETWORKS", "bridge:web", r"CD_NETWORKS=.*default bridge network has no aliases"),
        ("CD_IMAGE", "owner/app:1.0.0", r"CD_IMAGE=.*without a tag"),
        ("CD_IMAGE", "Owner/App", r"CD_IMAGE=.*lowercase"),
        ("CD_CONTAINER_NAME", "-app", r"CD_CONTAINER_NAME=.*container name"),
        ("CD_CONTAINER_NAME", "a", r"CD_CONTAINER_NAME=.*at least 2 characters"),
        ("CD_RESTART_POLICY", "sometimes", r"CD_RESTART_POLICY='sometimes'"),
        ("CD_POLL_INTERVAL", "0", r"CD_POLL_INTERVAL=.*above 0"),
        ("CD_POLL_INTERVAL", "soon", r"CD_POLL_INTERVAL='soon'"),
        ("CD_STOP_TIMEOUT", "-1", r"CD_STOP_TIMEOUT=.*0 or more"),
        ("CD_KEEP_IMAGES", "1", r"CD_KEEP_IMAGES=.*2 or more"),
        ("CD_STATE_FLUSH_INTERVAL", "-5", r"CD_STATE_FLUSH_INTERVAL=.*0 or more"),
        ("CD_STATE_FLUSH_INTERVAL", "inf", r"CD_STATE_FLUSH_INTERVAL=.*0 or more"),
        ("CD_HEALTH_URL", "localhost:8080/health", r"CD_HEALTH_URL=.*http:// or https://"),
        ("CD_VERSION_CONSTRAINT", "<two", r"CD_VERSION_CONSTRAINT=.*bad version"),
        ("CD_ALLOW_PRERELEASE", "maybe", r"CD_ALLOW_PRERELEASE='maybe'"),
    ],
)
def test_bad_values_name_the_variable_and_the_part(variable, value, message):
    with pytest.raises(SettingsError, match=message):
        load(**{variable: value})


def test_networks_are_parsed_once_into_names_and_aliases():
    settings = load(CD_NETWORKS="shop_default:web:shop-web, monitoring ,")

    joined = parse_networks(settings.cd_networks)
    assert joined == [NetworkJoin("shop_default", ("web", "shop-web")), NetworkJoin("monitoring")]
    assert parse_networks(load().cd_networks) == []


def test_networks_are_refused_for_a_swarm_service():
    with pytest.raises(SettingsError, match=r"CD_STRATEGY=.*CD_NETWORKS joins containers the agent creates"):
        load(CD_STRATEGY="swarm", CD_NETWORKS="shop_default")


def test_every_bad_variable_is_reported_at_once():
    with pytest.raises(SettingsError) as caught:
        load(CD_PORTS="x", CD_POLL_INTERVAL="-5")
    assert "CD_PORTS" in str(caught.value)
    assert "CD_POLL_INTERVAL" in str(caught.value)


def test_secrets_are_listed_for_redaction():
    settings = load(REGISTRY_USERNAME="me", REGISTRY_PASSWORD="hub-token")
    assert settings.secret_values() == ["hub-token"]
    assert "hub-token" not in repr(settings)


def test_the_deploy_strategy_is_swap_unless_set():
    assert load().cd_strategy == "swap"
    assert load(CD_STRATEGY=" Swap ").cd_strategy == "swap"


def test_swarm_names_its_service_and_update_config_with_defaults():
    settings = load(CD_STRATEGY="swarm")
    assert settings.cd_strategy == "swarm"
    assert settings.cd_service is None and settings.cd_replicas == 1
    assert (settings.cd_update_parallelism, settings.cd_update_order, settings.cd_update_failure_action) == (
        1, "start-first", "rollback"
    )
    assert load(CD_STRATEGY="swarm", CD_SERVICE="shop_web", CD_REPLICAS="3").cd_replicas == 3


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CD_REPLICAS", "0", r"CD_REPLICAS.*1 or more"),
        ("CD_UPDATE_ORDER", "random", r"CD_UPDATE_ORDER"),
        ("CD_UPDATE_FAILURE_ACTION", "explode", r"CD_UPDATE_FAILURE_ACTION"),
        ("CD_SERVICE", "-bad", r"CD_SERVICE.*service name"),
    ],
)
def test_bad_swarm_settings_are_refused_at_start_up(name, value, message):
    with pytest.raises(SettingsError, match=message):
        load(CD_STRATEGY="swarm", **{name: value})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("rolling", r"CD_STRATEGY=.*'rolling' is not a deploy strategy: use swap"),
    ],
)
def test_a_strategy_that_is_not_there_is_refused_at_start_up(value, message):
    with pytest.raises(SettingsError, match=message):
        load(CD_STRATEGY=value)


def test_the_refusal_names_every_strategy_of_the_table():
    from cd_agent.strategies import STRATEGIES

    with pytest.raises(SettingsError) as refused:
        load(CD_STRATEGY="rolling")
    assert all(name in str(refused.value) for name in STRATEGIES)


def test_blue_green_has_its_proxy_settings_with_defaults():
    settings = load(CD_STRATEGY="blue-green", CD_PORTS="127.0.0.1:8080:8080")
    assert (settings.cd_strategy, settings.cd_proxy_image, settings.cd_proxy_grace) == ("blue-green", "caddy:2", 30.0)
    settings = load(CD_STRATEGY="Blue-Green", CD_PORTS="8080:8080", CD_PROXY_IMAGE="picicd/caddy:2.6.2",
                    CD_PROXY_GRACE="0.5")
    assert (settings.cd_proxy_image, settings.cd_proxy_grace) == ("picicd/caddy:2.6.2", 0.5)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CD_PORTS": ""}, r"CD_STRATEGY=.*CD_PORTS is empty: the blue-green strategy needs at least one"),
        ({"CD_PORTS": "127.0.0.1:5353:53/udp"}, r"CD_STRATEGY=.*HTTP over TCP only; use CD_STRATEGY=swap"),
        ({"CD_PORTS": "8080:8080", "CD_PROXY_GRACE": "-1"}, r"CD_PROXY_GRACE=.*0 or more"),
        ({"CD_PORTS": "8080:8080", "CD_PROXY_IMAGE": "caddy 2"}, r"CD_PROXY_IMAGE=.*image reference"),
    ],
)
def test_blue_green_refuses_at_start_up_what_the_proxy_cannot_do(environ, message):
    with pytest.raises(SettingsError, match=message):
        load(CD_STRATEGY="blue-green", **environ)


def test_cd_platform_is_normalised_and_checked():
    assert load().cd_platform is None
    assert load(CD_PLATFORM=" linux/aarch64 ").cd_platform == "linux/arm64"
    assert load(CD_PLATFORM="linux/armhf").cd_platform == "linux/arm/v7"
    with pytest.raises(SettingsError, match="CD_PLATFORM"):
        load(CD_PLATFORM="arm64")


def test_the_listener_is_private_by_default_and_its_tokens_are_secrets():
    settings = load()
    assert (settings.cd_dashboard_host, settings.cd_dashboard_port) == ("127.0.0.1", 8002)
    assert settings.cd_dashboard_token is None and settings.cd_hook_token is None
    assert settings.cd_hook_min_interval == 5
    settings = load(CD_DASHBOARD_TOKEN="d" * 16, CD_HOOK_TOKEN="h-" + "0" * 14)
    assert "d" * 16 not in repr(settings) and "h-" + "0" * 14 not in repr(settings)
    assert {"d" * 16, "h-" + "0" * 14} <= set(settings.secret_values())


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CD_DASHBOARD_PORT", "0", "between 1 and 65535"),
        ("CD_DASHBOARD_PORT", "x", "CD_DASHBOARD_PORT"),
        ("CD_DASHBOARD_HOST", "http://pi/", "an address or host name"),
        ("CD_DASHBOARD_TOKEN", "short", "at least 16 characters"),
        ("CD_DASHBOARD_TOKEN", " " + "a" * 20, "without spaces at either end"),
        ("CD_HOOK_TOKEN", "short", "at least 16 characters"),
        ("CD_HOOK_TOKEN", "a/b?c" + "0" * 16, "part of a URL path"),
        ("CD_HOOK_MIN_INTERVAL", "-1", "0 or more"),
        ("CD_HOOK_MIN_INTERVAL", "nan", "0 or more"),
    ],
)
def test_bad_listener_settings_are_refused_at_start_up(name, value, message):
    with pytest.raises(SettingsError, match=name) as caught:
        load(**{name: value})
    assert message in str(caught.value)
    if "TOKEN" in name:
        assert value not in str(caught.value)
