"""Per-repository platforms in a repos file: one ``ci-agent serve`` (a real process), real git, dockerd
(classic builder under QEMU user emulation, set up by ``scripts/emulation``) and registry.

``pi`` names ``platforms = ["linux/amd64", "linux/arm64"]`` (and runs its tests on ``linux/arm64``);
``web`` names none. ``pi``'s release is one OCI image index with a manifest per platform, ``web``'s a
single image of the build engine's platform: the keys are each repository's, not the agent's. Likewise
``build_docker_host`` / ``build_fallback_local``: an unreachable engine fails only the repository that names it,
unless its own table allows the fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shared.platforms import parse_platform
from shared.registry import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, RegistryClient, parse_image_ref
from tests.support.ci_agent_server import registry_tags
from tests.support.docker_env import DockerJanitor
from tests.support.many_repos import OWN_SECRET, Repo, StartMany
from tests.support.platform_apps import commit_multi_sample
from tests.support.registry_server import RegistryServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ORG_SECRET = "whsec-platforms-org-W3n8-never-shown"
# Prints the machine, so the log shows the arm64 tests ran under emulation.
UNAME_TEST = '#!/bin/sh\necho "testing on $(uname -m)"\necho "sample tests passed"\n'


def _manifest(registry: RegistryServer, image: str, reference: str) -> httpx.Response:
    repository = parse_image_ref(image).repository
    accept = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST))
    return httpx.get(f"{registry.url}/v2/{repository}/manifests/{reference}", headers={"Accept": accept}, timeout=10)


def test_only_the_repository_with_platforms_releases_an_index_of_both(
    make_repo: Callable[..., Repo], start_many: StartMany, registry: RegistryServer, docker_janitor: DockerJanitor
) -> None:
    pi = make_repo(
        "pi", "me/pi", OWN_SECRET, platforms=["linux/amd64", "linux/arm64"], test_platforms=["linux/arm64"],
        test_runner="docker", test_command="sh /tests/run.sh", test_timeout=240,
    )
    web = make_repo("web", "org/web", ORG_SECRET)
    commit_multi_sample(pi.project)
    for tag in ("ci-staging-linux-amd64", "ci-staging-linux-arm64", "ci-test-linux-arm64", "ci-test-linux-amd64"):
        docker_janitor.images.add(f"{pi.image}:{tag}")
    agent = start_many([pi, web])

    numbers = {repo.name: agent.push(repo, f"fix: first release of {repo.name}", test_script=UNAME_TEST)
               for repo in (pi, web)}
    runs = {name: agent.wait_finished(number, timeout=600) for name, number in numbers.items()}
    for repo in (pi, web):
        run = runs[repo.name]
        assert (run["status"], run["version"], run["repo"]) == ("succeeded", "0.1.0", repo.name), (
            run, agent.log_of(run["number"])[-3000:]
        )

    # The release tags only (pi's staging tags were removed once its index was tagged).
    assert registry_tags(pi.image) == ["0.1.0", "latest"]
    assert registry_tags(web.image) == ["0.1.0", "latest"]

    # pi: one OCI index under 0.1.0 (and latest) with a manifest per platform, each of its architecture.
    index = _manifest(registry, pi.image, "0.1.0")
    assert index.headers["content-type"] == OCI_INDEX, index.text
    entries = index.json()["manifests"]
    assert sorted(f"{e['platform']['os']}/{e['platform']['architecture']}" for e in entries) == [
        "linux/amd64", "linux/arm64"
    ]
    for entry in entries:
        manifest = _manifest(registry, pi.image, entry["digest"])
        assert manifest.status_code == 200, manifest.text
    client = RegistryClient(parse_image_ref(pi.image))
    try:
        assert sorted(client.platforms("0.1.0") or []) == [parse_platform("linux/amd64"), parse_platform("linux/arm64")]
        assert client.manifest_digest("latest") == client.manifest_digest("0.1.0")
    finally:
        client.close()
    pi_log = agent.log_of(runs["pi"]["number"])
    assert "testing on aarch64" in pi_log, pi_log[-3000:]
    # CI_BUILDER's default (auto) takes the docker buildx plugin .ci/run installs (scripts/buildx)
    assert "builder: docker buildx " in pi_log, pi_log[-3000:]

    # web: a single image of the engine's own platform, tested on the host, no index.
    single = _manifest(registry, web.image, "0.1.0")
    assert single.headers["content-type"] in (OCI_MANIFEST, DOCKER_MANIFEST), single.text
    assert "manifests" not in single.json()
    web_log = agent.log_of(runs["web"]["number"])
    assert "linux/arm64" not in web_log and "emulation" not in web_log, web_log[-3000:]


def test_each_repository_builds_on_its_own_engine_and_falls_back_only_when_its_table_says(
    make_repo: Callable[..., Repo], start_many: StartMany, tmp_path: Path
) -> None:
    nowhere = f"unix://{tmp_path / 'no-such-engine.sock'}"
    far = make_repo("far", "me/far", OWN_SECRET, build_docker_host=nowhere)
    near = make_repo("near", "org/near", ORG_SECRET, build_docker_host=nowhere, build_fallback_local=True)
    local = make_repo("local", "org/local", ORG_SECRET)
    agent = start_many([far, near, local])

    numbers = {repo.name: agent.push(repo, f"fix: first release of {repo.name}") for repo in (far, near, local)}
    runs = {name: agent.wait_finished(number, timeout=180) for name, number in numbers.items()}
    logs = {name: agent.log_of(run["number"]) for name, run in runs.items()}

    # far: its engine is unreachable and its table has no fallback: the run fails, naming its key.
    assert runs["far"]["status"] == "failed", runs["far"]
    assert f"cannot reach the build engine {nowhere} ([repos.far] build_docker_host)" in runs["far"]["error"]
    assert registry_tags(far.image) == []
    # near: the same engine, but build_fallback_local = true in its table: built on the local engine.
    assert (runs["near"]["status"], runs["near"]["version"]) == ("succeeded", "0.1.0"), (runs["near"], logs["near"])
    assert "[repos.near] build_fallback_local = true" in logs["near"]
    # local: no key, the local engine as without a repos file; nothing of the others' engine.
    assert (runs["local"]["status"], runs["local"]["version"]) == ("succeeded", "0.1.0"), runs["local"]
    assert nowhere not in logs["local"]
