"""The create-config comes from the settings and the new image, plus what the user set up on the old
container beyond its image (networks, labels, `docker run` options), never the old image's defaults."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cd_agent.apps import AppTarget, single_target
from cd_agent.container_spec import (
    LABEL_DIGEST,
    LABEL_MANAGED,
    LABEL_NETWORKS,
    LABEL_RUN,
    LABEL_VERSION,
    ContainerSpec,
    MountSpec,
    beside,
    build_spec,
    check_spec,
    networks_text,
    read_env_file,
)
from cd_agent.engine import ContainerInfo, ImageInfo, MountInfo, NetworkAttachment, ProcessConfig
from cd_agent.errors import DeployError
from cd_agent.settings import CdSettings, PortMapping
from shared.settings import load_settings
from tests.support.fake_engine import FakeEngine

ANON = "a" * 64
CHECK = {"Test": ["CMD", "wget", "-q", "http://127.0.0.1:8080/"], "Interval": 300_000_000, "Retries": 3}
OLD_IMAGE = ImageInfo(
    id="sha256:old", labels={"org.opencontainers.image.version": "1.0.0", "maintainer": "me"},
    process=ProcessConfig(cmd=("/app/start.sh",), user="app", working_dir="/app", healthcheck=CHECK),
)


def settings(**env: str) -> AppTarget:
    return single_target(
        load_settings(CdSettings, {"CD_IMAGE": "127.0.0.1:5000/o/app", "CD_CONTAINER_NAME": "app", **env})
    )


def old_container(*mounts: MountInfo, **setup: Any) -> ContainerInfo:
    """Created from OLD_IMAGE: its labels and process config are the image's unless ``setup`` says otherwise."""
    fields: dict[str, Any] = {
        "labels": {**OLD_IMAGE.labels, LABEL_VERSION: "1.0.0", "com.example.user-label": "x"},
        "process": OLD_IMAGE.process,
        "network_mode": "default",
        "networks": (NetworkAttachment("bridge"),),
        **setup,
    }
    return ContainerInfo(
        id="old", name="app", image="127.0.0.1:5000/o/app:1.0.0", image_id="sha256:old", status="running",
        running=True, restarting=False, exit_code=0, restart_count=0, mounts=mounts, **fields,
    )


def spec_from(old: ContainerInfo, image: ImageInfo | None = OLD_IMAGE, **env: str) -> ContainerSpec:
    return build_spec(
        settings(**env), image="r/app:1.1.0", version="1.1.0", digest=None, env={}, old=old, old_image=image,
    )


def test_settings_make_name_ports_volumes_restart_policy_and_labels() -> None:
    spec = build_spec(
        settings(CD_PORTS="127.0.0.1:8080:80,53:53/udp", CD_VOLUMES="data:/data,/srv/cfg:/cfg:ro",
                 CD_RESTART_POLICY="always"),
        image="127.0.0.1:5000/o/app:1.1.0", version="1.1.0", digest="sha256:abc", env={"A": "1"}, run=4,
    )

    assert spec.name == "app" and spec.image == "127.0.0.1:5000/o/app:1.1.0"
    assert spec.ports == (PortMapping("127.0.0.1", 8080, 80), PortMapping(None, 53, 53, "udp"))
    assert spec.mounts == (MountSpec("volume", "data", "/data"), MountSpec("bind", "/srv/cfg", "/cfg", True))
    assert spec.restart_policy == "always"
    assert spec.env == ("A=1",)
    assert dict(spec.labels) == {
        LABEL_MANAGED: "true", LABEL_VERSION: "1.1.0", LABEL_DIGEST: "sha256:abc", LABEL_RUN: "4"
    }


def test_of_the_old_containers_volumes_only_the_anonymous_ones_are_carried() -> None:
    old = old_container(
        MountInfo("volume", "/cache", name=ANON),
        MountInfo("volume", "/data", name="data"),            # configured: comes from the settings
        MountInfo("volume", "/gone", name="removed-named"),   # a named volume no longer in CD_VOLUMES
        MountInfo("bind", "/etc/x", source="/etc/x"),
        MountInfo("volume", "/ro", name="b" * 64, rw=False),
    )

    spec = spec_from(old, CD_VOLUMES="data:/data")

    assert spec.mounts == (
        MountSpec("volume", "data", "/data"),
        MountSpec("volume", ANON, "/cache"),
        MountSpec("volume", "b" * 64, "/ro", True),
    )
    assert spec.env == ()  # the image's ENV applies; the old container's Env is not carried over
    assert spec.labels[LABEL_DIGEST] == ""


def test_an_agent_made_container_carries_nothing_but_its_own_kind() -> None:
    """A container the agent created from the image alone gives the next one nothing of its own."""
    old = old_container(labels={**OLD_IMAGE.labels, LABEL_MANAGED: "true", LABEL_VERSION: "1.0.0"})

    spec = spec_from(old)

    assert spec.process == ProcessConfig() and spec.networks == () and spec.network_mode is None
    assert set(spec.labels) == {LABEL_MANAGED, LABEL_VERSION, LABEL_DIGEST}
    assert spec.host_options == {}


def test_labels_neither_ours_nor_the_images_are_carried_compose_ones_included() -> None:
    compose = {"com.docker.compose.project": "shop", "com.docker.compose.service": "web"}
    old = old_container(labels={
        **OLD_IMAGE.labels, **compose, "maintainer": "someone else",  # set at `docker run` over the image's
        "io.pi-cicd.colour": "blue", LABEL_RUN: "3", "com.example.user-label": "x",
    })

    labels = spec_from(old).labels

    assert {key: labels[key] for key in compose} == compose
    assert labels["maintainer"] == "someone else" and labels["com.example.user-label"] == "x"
    assert "org.opencontainers.image.version" not in labels  # the new image's label applies
    assert "io.pi-cicd.colour" not in labels and LABEL_RUN not in labels


@pytest.mark.parametrize(
    ("given", "carried"),
    [
        (OLD_IMAGE.process, ProcessConfig()),
        (replace(OLD_IMAGE.process, cmd=("sh", "-c", "serve")), ProcessConfig(cmd=("sh", "-c", "serve"))),
        # an entrypoint given at `docker run` drops the image's CMD: the args given with it go with it, or none
        (replace(OLD_IMAGE.process, entrypoint=("/bin/tini",), cmd=None), ProcessConfig(entrypoint=("/bin/tini",))),
        (replace(OLD_IMAGE.process, entrypoint=("/bin/tini",)),
         ProcessConfig(cmd=("/app/start.sh",), entrypoint=("/bin/tini",))),
        (replace(OLD_IMAGE.process, user="1000", working_dir="/srv"), ProcessConfig(user="1000", working_dir="/srv")),
        # a health check option given at `docker run`: that field only, the new image's test still applies
        (replace(OLD_IMAGE.process, healthcheck={**CHECK, "Retries": 5}), ProcessConfig(healthcheck={"Retries": 5})),
        (replace(OLD_IMAGE.process, healthcheck={"Test": ["NONE"]}), ProcessConfig(healthcheck={"Test": ["NONE"]})),
    ],
)
def test_cmd_entrypoint_user_and_workdir_are_carried_only_where_docker_run_overrode_the_image(
    given: ProcessConfig, carried: ProcessConfig
) -> None:
    assert spec_from(old_container(process=given)).process == carried


def test_host_options_are_carried_as_the_engine_reported_them() -> None:
    options = {"CapAdd": ["NET_ADMIN"], "Memory": 64 * 2**20, "ExtraHosts": ["printer:10.0.0.9"]}

    assert spec_from(old_container(host_options=options)).host_options == options


def test_without_the_old_image_the_users_options_cannot_be_told_from_the_images() -> None:
    with pytest.raises(DeployError, match="cannot be inspected"):
        spec_from(old_container(), image=None)


def test_networks_are_carried_with_aliases_and_static_addresses_the_created_on_one_first() -> None:
    stack = NetworkAttachment("shop_default", ("web", "shop-web"), ipv4_address="172.30.0.10")
    old = old_container(
        network_mode="shop_default", networks=(NetworkAttachment("monitoring", ("app",)), stack),
    )

    assert spec_from(old).networks == (stack, NetworkAttachment("monitoring", ("app",)))


def test_a_container_on_the_default_bridge_only_stays_on_the_default_and_one_also_on_others_keeps_both() -> None:
    assert spec_from(old_container()).networks == ()
    connected = old_container(networks=(NetworkAttachment("shop_default", ("web",)), NetworkAttachment("bridge")))

    assert spec_from(connected).networks == (NetworkAttachment("bridge"), NetworkAttachment("shop_default", ("web",)))


def test_cd_networks_joins_networks_and_its_aliases_win_for_a_network_it_names() -> None:
    old = old_container(
        network_mode="shop_default",
        networks=(NetworkAttachment("shop_default", ("web", "old-alias"), ipv4_address="172.30.0.10"),),
    )

    networks = spec_from(old, CD_NETWORKS="shop_default:web,monitoring:app").networks

    assert networks == (
        NetworkAttachment("shop_default", ("web",), ipv4_address="172.30.0.10"),
        NetworkAttachment("monitoring", ("app",)),
    )
    first = build_spec(settings(CD_NETWORKS="shop_default:web"), image="r:1", version="1", digest=None, env={})
    assert first.networks == (NetworkAttachment("shop_default", ("web",)),)


def test_a_network_dropped_from_cd_networks_is_left_and_one_attached_by_hand_is_carried() -> None:
    first = build_spec(settings(CD_NETWORKS="shop:web,monitoring"), image="r:1", version="1", digest=None, env={})
    assert first.labels[LABEL_NETWORKS] == "shop,monitoring"
    # The user attaches `backup` by hand; CD_NETWORKS drops `monitoring`.
    running = old_container(
        labels={**first.labels, LABEL_VERSION: "1.0.0"}, network_mode="shop",
        networks=(NetworkAttachment("shop", ("web",)), NetworkAttachment("monitoring"), NetworkAttachment("backup")),
    )

    second = spec_from(running, CD_NETWORKS="shop:web")

    assert second.networks == (NetworkAttachment("shop", ("web",)), NetworkAttachment("backup"))
    assert second.labels[LABEL_NETWORKS] == "shop"
    # CD_NETWORKS emptied: the networks it added go, the one attached by hand stays (and is no setting's).
    third = spec_from(replace(running, labels=second.labels, networks=second.networks), CD_NETWORKS="")
    assert third.networks == (NetworkAttachment("backup"),) and LABEL_NETWORKS not in third.labels


def test_a_network_the_user_had_attached_stays_when_cd_networks_names_it_and_then_no_longer() -> None:
    by_hand = old_container(network_mode="shop", networks=(NetworkAttachment("shop", ("web",)),))

    named = spec_from(by_hand, CD_NETWORKS="shop:web:shop-web")

    assert LABEL_NETWORKS not in named.labels  # it was the user's before the setting named it
    unnamed = spec_from(replace(by_hand, labels=named.labels, networks=named.networks))
    assert unnamed.networks == (NetworkAttachment("shop", ("web", "shop-web")),)


@pytest.mark.parametrize("mode", ["host", "none", "container:" + "c" * 64])
def test_a_network_mode_is_carried_and_refuses_ports_and_networks_before_anything_is_touched(mode: str) -> None:
    old = old_container(network_mode=mode, networks=())

    assert spec_from(old).network_mode == mode
    with pytest.raises(DeployError, match="ports cannot be published: empty CD_PORTS"):
        spec_from(old, CD_PORTS="8080:80")
    with pytest.raises(DeployError, match="cannot join other networks: empty CD_NETWORKS"):
        spec_from(old, CD_NETWORKS="shop_default")


def test_beside_puts_the_colour_on_the_proxy_network_first_and_keeps_the_apps_other_networks() -> None:
    old = old_container(network_mode="app-net", networks=(
        NetworkAttachment("app-net", ("app-blue",)), NetworkAttachment("shop_default", ("web",)),
    ))

    spec = beside(spec_from(old, CD_PORTS="8080:80"), name="app-green", network="app-net", alias="app-green")

    assert spec.name == "app-green" and spec.ports == ()
    assert spec.networks == (NetworkAttachment("app-net", ("app-green",)), NetworkAttachment("shop_default", ("web",)))


def test_beside_refuses_what_two_running_containers_cannot_share() -> None:
    fixed = old_container(network_mode="shop", networks=(NetworkAttachment("shop", ("web",), ipv4_address="10.1.0.5"),))
    with pytest.raises(DeployError, match=r"cannot be held by two containers at once.*shop \(10.1.0.5\)"):
        beside(spec_from(fixed), name="app-green", network="app-net", alias="app-green")
    with pytest.raises(DeployError, match="network mode 'host': the blue-green strategy needs the proxy's network"):
        beside(spec_from(old_container(network_mode="host", networks=())), name="g", network="app-net", alias="g")


def test_check_spec_names_a_missing_network_and_a_shared_network_container_gone_or_stopped() -> None:
    engine = FakeEngine()
    engine.networks.add("shop_default")
    ok = ContainerSpec("app", "r:1", networks=(NetworkAttachment("shop_default"),))
    check_spec(engine, ok)

    with pytest.raises(DeployError, match="network monitoring does not exist"):
        check_spec(engine, replace(ok, networks=(*ok.networks, NetworkAttachment("monitoring"))))
    with pytest.raises(DeployError, match=r"shares the network of container cccccccccccc .*which is gone"):
        check_spec(engine, ContainerSpec("app", "r:1", network_mode="container:" + "c" * 64))
    db = engine.run_foreign("db", "postgres:16")
    check_spec(engine, ContainerSpec("app", "r:1", network_mode=f"container:{db}"))
    engine.stop(db, timeout=0)
    with pytest.raises(DeployError, match="container db, which is not running"):
        check_spec(engine, ContainerSpec("app", "r:1", network_mode=f"container:{db}"))


def test_a_configured_volume_wins_over_an_anonymous_one_at_the_same_path() -> None:
    old = old_container(MountInfo("volume", "/data", name=ANON))

    spec = spec_from(old, CD_VOLUMES="data:/data")

    assert spec.mounts == (MountSpec("volume", "data", "/data"),)


def test_env_file_reads_like_docker_env_files(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("# comment\nDATABASE_URL=postgres://db/app\nEMPTY=\nFROM_AGENT\nMISSING_HERE\nQUOTED='a b'\n")

    env = read_env_file(path, {"FROM_AGENT": "agent-value"})

    assert env == {"DATABASE_URL": "postgres://db/app", "EMPTY": "", "FROM_AGENT": "agent-value", "QUOTED": "a b"}
    assert read_env_file(None) == {}


def test_image_digest_is_found_for_the_repository_it_was_pulled_from() -> None:
    image = ImageInfo(
        id="sha256:x",
        repo_digests=("other/app@sha256:1", "127.0.0.1:5000/o/app@sha256:2", "o/hub@sha256:3"),
    )

    assert image.digest_for("127.0.0.1:5000/o/app") == "sha256:2"
    assert image.digest_for("docker.io/o/hub") == "sha256:3"
    assert image.digest_for("127.0.0.1:5000/o/none") is None


def test_the_deploy_log_says_where_the_new_container_is_on_the_network() -> None:
    spec = ContainerSpec("app", "r:1", networks=(
        NetworkAttachment("shop", ("web", "api"), ipv4_address="10.1.0.5"), NetworkAttachment("monitoring"),
    ))

    assert networks_text(spec) == "shop as web/api at 10.1.0.5, monitoring"
    assert networks_text(ContainerSpec("app", "r:1")) == "the default bridge"
    assert networks_text(ContainerSpec("app", "r:1", network_mode="container:" + "e" * 64)) == (
        "network mode container:eeeeeeeeeeee"
    )
