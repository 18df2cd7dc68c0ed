"""The release labels cost the legacy builder one step, not one per label (real dockerd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci_agent.builder import DockerGateway
from ci_agent.disk_budget import OWNER_LABEL
from tests.support.docker_env import DockerJanitor, busybox_dockerfile, unique, write_busybox_context

pytestmark = pytest.mark.docker

LABELS = {
    "org.opencontainers.image.revision": "4ece1e2f" * 5,
    "org.opencontainers.image.source": "https://github.com/owner/app",
    "org.opencontainers.image.version": "1.2.3",
    "org.opencontainers.image.created": "2026-11-28T19:00:00+00:00",
}


def _build(docker_client: object, janitor: DockerJanitor, tmp_path: Path, labels: dict[str, str],
           target: str | None = None) -> tuple[DockerGateway, str, list[str], Path]:
    # A unique first layer: no cache parent is shared with other builds, so removing this image
    # afterwards races no one (the legacy builder fails on a cache parent removed under it).
    nonce = f"ENV PICICD_NONCE={unique('nonce')}\n"
    dockerfile = "FROM scratch AS test\n" + nonce + "COPY busybox /bin/busybox\n" + busybox_dockerfile().replace(
        "FROM scratch\n", "FROM scratch\n" + nonce, 1
    )
    context = write_busybox_context(tmp_path / "ctx", dockerfile, {"www/index.html": "hi"})
    tag = f"{unique('labels')}:1.2.3"
    janitor.images.add(tag)
    gateway = DockerGateway(docker_client)
    lines: list[str] = []
    gateway.build(context, [tag], labels=labels, target=target, on_output=lines.append)
    return gateway, tag, [line for line in lines if line.startswith("Step ") and " : LABEL " in line], context


def test_four_labels_are_one_label_step_on_the_final_stage(
    docker_client: object, docker_janitor: DockerJanitor, tmp_path: Path
) -> None:
    gateway, tag, label_steps, context = _build(docker_client, docker_janitor, tmp_path, LABELS)

    assert len(label_steps) == 1, label_steps
    assert {key: gateway.image_labels(tag).get(key) for key in LABELS} == LABELS
    assert gateway.image_labels(tag)[OWNER_LABEL] == tag.rpartition(":")[0]  # what CI_DISK_BUDGET prunes
    assert "LABEL" not in (context / "Dockerfile").read_text()  # the checkout is left as it was


def test_a_value_the_dockerfile_would_rewrite_goes_through_the_api_unchanged(
    docker_client: object, docker_janitor: DockerJanitor, tmp_path: Path
) -> None:
    labels = {**LABELS, "org.opencontainers.image.source": 'https://example.test/$HOME/"x"'}

    gateway, tag, label_steps, _ = _build(docker_client, docker_janitor, tmp_path, labels)

    assert gateway.image_labels(tag)["org.opencontainers.image.source"] == 'https://example.test/$HOME/"x"'
    # the API's parameter: one step per label, CI's own (pi-cicd.ci.image, ci_agent/disk_budget.py) included
    assert len(label_steps) == len(labels) + 1


def test_a_target_stage_gets_the_labels_too(
    docker_client: object, docker_janitor: DockerJanitor, tmp_path: Path
) -> None:
    gateway, tag, _, _ = _build(docker_client, docker_janitor, tmp_path, LABELS, target="test")

    assert gateway.image_labels(tag)["org.opencontainers.image.version"] == "1.2.3"
