"""Which compose a test runs: Debian's ``docker-compose`` 1.29 (``v1``) or the ``docker compose`` plugin (``v2``).

The compose strategy must work with both. ``scripts/compose-v2`` (run by ``.ci/run``) puts the v2 plugin at
``PICICD_COMPOSE_V2``, a folder the docker CLI never searches by itself, so the machine's compose stays 1.29
for everything else. A test parametrized with ``both_compose_versions`` gets, for ``v2``, ``DOCKER_CONFIG``
pointed at a temporary folder whose ``cli-plugins/docker-compose`` links to that plugin (the docker CLI looks
for plugins in ``$DOCKER_CONFIG/cli-plugins``), and for ``v1`` at an empty one; every process it starts (the
agent, the user's compose) inherits it. The fixture checks that ``SubprocessCompose.detect`` then picks the
wanted one. A compose that is missing skips the test on a developer's machine and fails it in CI
(``CI=true``): neither version may go untested there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cd_agent.compose_project import ComposeError, SubprocessCompose

V2_PLUGIN = Path(os.environ.get("PICICD_COMPOSE_V2", "/usr/local/lib/pi-cicd-test/cli-plugins/docker-compose"))
COMMANDS = {"v1": ("docker-compose",), "v2": ("docker", "compose")}
both_compose_versions = pytest.mark.parametrize("compose_cli", sorted(COMMANDS), indirect=True)


def _missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI runs the compose tests under both versions)")
    pytest.skip(message)


@pytest.fixture
def compose_cli(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                monkeypatch: pytest.MonkeyPatch) -> str:
    """``v1``/``v2`` when parametrized (``both_compose_versions``), else whatever the machine's compose is."""
    wanted: str | None = getattr(request, "param", None)
    if wanted is None:
        return " ".join(SubprocessCompose.detect().command)
    config = tmp_path_factory.mktemp(f"docker-config-{wanted}")
    plugins = config / "cli-plugins"
    plugins.mkdir()
    if wanted == "v2":
        if not os.access(V2_PLUGIN, os.X_OK):
            _missing(f"compose v2 is not at {V2_PLUGIN}: run scripts/compose-v2")
        (plugins / "docker-compose").symlink_to(V2_PLUGIN)
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    try:
        command = SubprocessCompose.detect().command
    except ComposeError as exc:
        _missing(str(exc))
        raise
    if command != COMMANDS[wanted]:
        # v1 wanted where a system-wide v2 plugin (/usr/libexec/docker/cli-plugins) shadows docker-compose.
        _missing(f"compose {wanted} wanted but {' '.join(command)} is what the agent would run here")
    return wanted
