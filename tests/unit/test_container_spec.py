"""The create-config comes from the settings and the new image, never from the old container's Config."""

from __future__ import annotations

from pathlib import Path

from cd_agent.container_spec import (
    LABEL_DIGEST,
    LABEL_MANAGED,
    LABEL_RUN,
    LABEL_VERSION,
    MountSpec,
    build_spec,
    read_env_file,
)
from cd_agent.engine import ContainerInfo, ImageInfo, MountInfo
from cd_agent.settings import CdSettings, PortMapping
from shared.settings import load_settings

ANON = "a" * 64


def settings(**env: str) -> CdSettings:
    return load_settings(CdSettings, {"CD_IMAGE": "127.0.0.1:5000/o/app", "CD_CONTAINER_NAME": "app", **env})


def old_container(*mounts: MountInfo) -> ContainerInfo:
    return ContainerInfo(
        id="old", name="app", image="127.0.0.1:5000/o/app:1.0.0", image_id="sha256:old", status="running",
        running=True, restarting=False, exit_code=0, restart_count=0,
        labels={LABEL_VERSION: "1.0.0", "com.example.user-label": "x"}, mounts=mounts,
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


def test_nothing_is_copied_from_the_old_container_but_its_anonymous_volumes() -> None:
    old = old_container(
        MountInfo("volume", "/cache", name=ANON),
        MountInfo("volume", "/data", name="data"),            # configured: comes from the settings
        MountInfo("volume", "/gone", name="removed-named"),   # a named volume no longer in CD_VOLUMES
        MountInfo("bind", "/etc/x", source="/etc/x"),
        MountInfo("volume", "/ro", name="b" * 64, rw=False),
    )

    spec = build_spec(
        settings(CD_VOLUMES="data:/data"), image="r/app:1.1.0", version="1.1.0", digest=None, env={}, old=old,
    )

    assert spec.mounts == (
        MountSpec("volume", "data", "/data"),
        MountSpec("volume", ANON, "/cache"),
        MountSpec("volume", "b" * 64, "/ro", True),
    )
    assert spec.env == ()  # the image's ENV applies; the old container's Env is not carried over
    assert "com.example.user-label" not in spec.labels
    assert spec.labels[LABEL_DIGEST] == ""


def test_a_configured_volume_wins_over_an_anonymous_one_at_the_same_path() -> None:
    old = old_container(MountInfo("volume", "/data", name=ANON))

    spec = build_spec(settings(CD_VOLUMES="data:/data"), image="r:1", version="1", digest=None, env={}, old=old)

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
