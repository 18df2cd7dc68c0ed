"""``cd-agent`` from the command line, as a real subprocess against dockerd and a real registry."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cd_agent.cli import format_status
from tests.support.cd_apps import CdWorld, cd_agent, status_json, version_of

REPO = Path(__file__).resolve().parents[2]


def test_the_watcher_does_not_import_the_web_stack():
    code = (
        "import sys, cd_agent.cli, cd_agent.agent, cd_agent.watcher; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [[], ["watch"], ["deploy"], ["rollback"], ["status"]])
def test_help(command, tmp_path):
    result = cd_agent(*command, "--help", environ={}, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: cd-agent")


def test_bad_settings_exit_2_naming_the_variable(tmp_path):
    environ = {"CD_IMAGE": "127.0.0.1:5000/o/app", "CD_CONTAINER_NAME": "app", "CD_PORTS": "8080:80:90"}
    result = cd_agent("status", environ=environ, cwd=tmp_path)
    assert result.returncode == 2
    assert "CD_PORTS='8080:80:90'" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_come_from_the_env_file_under_the_environment(tmp_path):
    (tmp_path / ".env").write_text("CD_IMAGE=127.0.0.1:5000/o/from-file\nCD_CONTAINER_NAME=from-file\n")
    result = cd_agent("status", "--json", environ={"CD_CONTAINER_NAME": "from-env"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["image"] == "127.0.0.1:5000/o/from-file"
    assert data["container"] == "from-env"


def test_format_status():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    text = format_status(
        {
            "image": "127.0.0.1:5000/o/app", "container": "app",
            "current": {"version": "1.1.0", "digest": "sha256:" + "a" * 64, "deployed_at": "2026-01-01T11:00:00+00:00"},
            "previous": {"version": "1.0.0", "digest": None, "deployed_at": None},
            "quarantined": [
                {"version": "1.2.0", "reason": "health check failed", "since": "2026-01-01T11:30:00+00:00"},
                {"version": "1.3.0", "reason": "rolled back by hand", "since": "2026-01-01T11:59:00+00:00"},
            ],
            "last_poll_at": "2026-01-01T11:59:30+00:00", "next_poll_at": "2026-01-01T12:00:30+00:00",
            "last_error": "registry unreachable: connection refused", "deploy_in_progress": None,
        },
        now=now,
    )
    lines = text.splitlines()
    assert lines[2] == "deployed     1.1.0  sha256:aaaaaaaaaaaa…  since 2026-01-01 11:00:00 UTC (60m ago)"
    assert lines[3] == "previous     1.0.0"
    assert lines[4] == "quarantined  1.2.0 since 2026-01-01 11:30:00 UTC (30m ago): health check failed"
    assert lines[5] == "             1.3.0 since 2026-01-01 11:59:00 UTC (60s ago): rolled back by hand"
    assert lines[6] == "last poll    2026-01-01 11:59:30 UTC (30s ago)"
    assert lines[7] == "next poll    2026-01-01 12:00:30 UTC (in 30s)"
    assert lines[8] == "last error   registry unreachable: connection refused"


@pytest.mark.docker
def test_deploy_rollback_and_status_from_the_command_line(cd_world: CdWorld):
    world = cd_world
    environ, cwd = world.environ(), world.root
    for version in ("1.0.0", "1.1.0"):
        world.releases.push(version)

    result = cd_agent("rollback", environ=environ, cwd=cwd)
    assert result.returncode == 4, result.stderr
    assert "no previous version" in result.stderr

    result = cd_agent("deploy", "1.0.0", environ=environ, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deployed 1.0.0; run 1")
    assert world.served() == "1.0.0"

    # without a version: the newest release
    result = cd_agent("deploy", environ=environ, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deployed 1.1.0 (was 1.0.0); run 2")
    assert world.served() == "1.1.0"

    result = cd_agent("deploy", "1.1.0", environ=environ, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1.1.0 is already deployed and running"

    status = status_json(world)
    assert version_of(status["current"]) == "1.1.0"
    assert version_of(status["previous"]) == "1.0.0"
    assert status["quarantined"] == []
    assert status["current"]["digest"].startswith("sha256:")

    result = cd_agent("rollback", "--json", environ=environ, cwd=cwd)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["outcome"], report["version"], report["previous"]) == ("deployed", "1.0.0", "1.1.0")
    assert world.served() == "1.0.0"

    status = status_json(world)
    assert version_of(status["current"]) == "1.0.0"
    assert [item["version"] for item in status["quarantined"]] == ["1.1.0"]

    text = cd_agent("status", environ=environ, cwd=cwd)
    assert text.returncode == 0
    assert "deployed     1.0.0" in text.stdout
    assert "quarantined  1.1.0 since" in text.stdout
    assert "last poll    never" in text.stdout

    # a quarantined version only with --force, and the newest-release default skips it
    result = cd_agent("deploy", "1.1.0", environ=environ, cwd=cwd)
    assert result.returncode == 4
    assert "quarantined" in result.stderr and "--force" in result.stderr
    result = cd_agent("deploy", environ=environ, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "1.0.0 is already deployed" in result.stdout
    result = cd_agent("deploy", "1.1.0", "--force", environ=environ, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert world.served() == "1.1.0"

    result = cd_agent("deploy", "9.9.9", environ=environ, cwd=cwd)
    assert result.returncode == 4
    assert "9.9.9 does not exist" in result.stderr
    result = cd_agent("deploy", "latest", environ=environ, cwd=cwd)
    assert result.returncode == 2
    assert "release tag like 1.2.3" in result.stderr
    assert world.served() == "1.1.0"


@pytest.mark.docker
def test_a_failed_deploy_exits_1_and_the_old_version_serves(cd_world: CdWorld):
    world = cd_world
    environ, cwd = world.environ(), world.root
    world.releases.push("1.0.0")
    world.releases.push("1.0.1", "broken")
    assert cd_agent("deploy", "1.0.0", environ=environ, cwd=cwd).returncode == 0

    result = cd_agent("deploy", "1.0.1", environ=environ, cwd=cwd)

    assert result.returncode == 1
    assert "deploy of 1.0.1 rolled back" in result.stderr
    assert "Traceback" not in result.stderr
    assert world.served() == "1.0.0"
    status = status_json(world)
    assert version_of(status["current"]) == "1.0.0"
    assert [item["version"] for item in status["quarantined"]] == ["1.0.1"]


def test_deploy_without_a_release_exits_4(tmp_path, registry):
    environ = {
        "CD_IMAGE": f"{registry.host}/nobody/never-pushed", "CD_CONTAINER_NAME": "picicd-none",
        "STATE_DIR": str(tmp_path / "state"), "LOG_DIR": str(tmp_path / "logs"),
    }
    result = cd_agent("deploy", environ=environ, cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert "has no release to deploy" in result.stderr
