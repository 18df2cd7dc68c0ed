"""What scripts/demo, scripts/demo-clean and .ci/run check before they change anything.

- Run by a user who is not root (uid 65534 through ``setpriv``) each stops at once with exit 77 and
  says how to re-run it as root, having created nothing.
- The Docker Engine counts as installed only when ``dockerd`` is on PATH or ``docker info`` answers:
  with the ``docker`` CLI alone the demo installs ``docker.io``. Tested with a PATH holding fake
  ``docker`` and ``apt-get`` programs; the shared dockerd is never started or stopped.

The full demo is tests/integration/test_demo.py (slow); these take a second each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.other_user import NOBODY, folder_under_tmp, needs_root

ROOT = Path(__file__).resolve().parents[2]
PREFLIGHT = ROOT / "scripts" / "lib" / "preflight.sh"
EX_NOPERM = 77


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder under /tmp that uid 65534 can read and write."""
    with folder_under_tmp("picicd-preflight-", 0o777) as path:
        yield path


def copy_scripts(destination: Path) -> Path:
    """The scripts and what they source, under ``destination`` as in the repository (readable by anyone:
    a clone under /root would not be)."""
    for relative in (
        "scripts/demo", "scripts/demo-clean", ".ci/run", "scripts/lib/preflight.sh", "scripts/lib/demo_dir.sh"
    ):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.parent.chmod(0o755)
        shutil.copy2(ROOT / relative, target)
        target.chmod(0o755)
    return destination


@needs_root
@pytest.mark.parametrize(("script", "args"), [("scripts/demo", []), ("scripts/demo-clean", ["--all"]), (".ci/run", [])])
def test_not_root_stops_at_once_saying_how_to_rerun(open_dir: Path, script: str, args: list[str]) -> None:
    repo = copy_scripts(open_dir / "repo")
    demo_dir = open_dir / "demo"  # writable by uid 65534: the demo could create it if it went on
    before = sorted(str(path) for path in open_dir.rglob("*"))
    env = {**os.environ, "PICICD_DEMO_DIR": str(demo_dir), "PICICD_DEMO_PYTHON": sys.executable}
    result = subprocess.run(
        [*NOBODY, script, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=30, check=False
    )
    name = Path(script).name
    assert result.returncode == EX_NOPERM, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(f"{name}: must run as root"), result.stderr
    hint = f"sudo {script}" if shutil.which("sudo") else f"su root -c '{script}"
    assert hint in result.stderr, result.stderr
    assert sorted(str(path) for path in open_dir.rglob("*")) == before  # no venv, no demo folder, nothing


def engine_present(path: Path) -> bool:
    result = subprocess.run(
        ["/bin/bash", "-c", f'. "{PREFLIGHT}"; docker_engine_present'],
        env={"PATH": str(path)}, capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def fake(path: Path, name: str, script: str) -> None:
    path.mkdir(exist_ok=True)
    (path / name).write_text("#!/bin/sh\n" + script)
    (path / name).chmod(0o755)


@pytest.mark.parametrize(
    ("programs", "present"),
    [
        ({}, False),
        ({"docker": "exit 1\n"}, False),  # the CLI, no engine: what the demo took for an installed Docker
        ({"docker": "exit 1\n", "dockerd": "exit 0\n"}, True),  # installed, not started yet
        ({"docker": 'test "$1" = info\n'}, True),  # an engine answers (DOCKER_HOST, or a dockerd off PATH)
    ],
    ids=["nothing", "cli-only", "cli-and-dockerd", "cli-answering"],
)
def test_docker_engine_detection(tmp_path: Path, programs: dict[str, str], present: bool) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in programs.items():
        fake(bin_dir, name, script)
    assert engine_present(bin_dir) is present


@needs_root
def test_the_demo_installs_docker_io_when_only_the_cli_is_there(tmp_path: Path) -> None:
    """The demo's first step with a docker CLI that reaches no engine and no dockerd on PATH."""
    bin_dir = tmp_path / "bin"
    calls = tmp_path / "apt-get.calls"
    fake(bin_dir, "docker", "exit 1\n")
    # Records what would be installed, then stops the demo before anything else happens.
    fake(bin_dir, "apt-get", f'echo "$*" >>{calls}\n[ "$1" = update ] || exit 3\n')
    demo_dir = tmp_path / "demo"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",  # no /usr/sbin: this machine's dockerd is out of sight
        "HOME": str(tmp_path),
        "PICICD_DEMO_DIR": str(demo_dir),
        "PICICD_DEMO_PYTHON": sys.executable,
    }
    assert shutil.which("dockerd", path=env["PATH"]) is None
    result = subprocess.run(
        [str(ROOT / "scripts" / "demo")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )
    installed = calls.read_text().splitlines() if calls.exists() else []
    assert result.returncode == 3, result.stdout + result.stderr
    assert installed[0] == "update -qq"
    assert "docker.io" in installed[1].split(), installed
    assert "installing from the distribution: docker.io" in result.stdout
    assert not demo_dir.exists()


DEMO_DIR_LIB = ROOT / "scripts" / "lib" / "demo_dir.sh"
DEMO_VARS = """IMAGE=127.0.0.1:5999/demo/flask-app
CONTAINER={name}-app
APP_URL=http://127.0.0.1:8080
CI_URL=http://127.0.0.1:8000
CI_DASHBOARD_URL=http://127.0.0.1:8001
BG_CONTAINER={name}-bluegreen
BG_URL=http://127.0.0.1:8081
"""


def demo_dir_problem(path: str) -> str:
    result = subprocess.run(
        ["/bin/bash", "-c", f'. "{DEMO_DIR_LIB}"; demo_dir_problem "$1"', "-", path],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return result.stdout.strip()


@needs_root
def test_demo_folder_paths(tmp_path: Path) -> None:
    """Which PICICD_DEMO_DIR values root accepts (tmp_path is root's, 0700, under root's sticky folders)."""
    (tmp_path / "real").mkdir(mode=0o755)
    (tmp_path / "link").symlink_to("real")  # root's link, relative target: followed and checked there
    (tmp_path / "file").touch()
    assert demo_dir_problem(str(tmp_path / "demo")) == ""  # missing: root will make it
    assert demo_dir_problem(f"{tmp_path}/missing/too/demo/") == ""
    assert demo_dir_problem(str(tmp_path / "link" / "demo")) == ""
    assert demo_dir_problem(f"{tmp_path}/real/../real/./demo") == ""
    assert demo_dir_problem("demo") == "PICICD_DEMO_DIR=demo is not an absolute path"
    assert demo_dir_problem("/") == "PICICD_DEMO_DIR=/ is the whole file system"
    assert "has characters other than" in demo_dir_problem(f"{tmp_path}/a b")
    assert demo_dir_problem(str(tmp_path / "link")) == f"{tmp_path}/link is a symbolic link (to real), not a folder"
    assert demo_dir_problem(str(tmp_path / "file" / "demo")) == (
        f"{tmp_path}/file is not a folder (it is a regular empty file)"
    )


@needs_root
def test_demo_clean_reads_what_the_demo_wrote_and_removes_the_folder(tmp_path: Path) -> None:
    """A folder as the demo leaves it (root's, 0700, demo.vars as it writes it): its process stops, it goes."""
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir(mode=0o700)
    (demo_dir / ".pi-cicd-demo").touch()
    (demo_dir / "demo.vars").write_text(DEMO_VARS.format(name=f"picicd-absent-{os.getpid()}"))
    (demo_dir / "pids").mkdir(mode=0o700)
    sleeper = subprocess.Popen(["sh", "-c", "sleep 60; :", str(demo_dir)], start_new_session=True)
    try:
        (demo_dir / "pids" / "sleeper.pid").write_text(f"{sleeper.pid}\n")
        result = subprocess.run(
            [str(ROOT / "scripts" / "demo-clean")], env={**os.environ, "PICICD_DEMO_DIR": str(demo_dir)},
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert sleeper.wait(timeout=30) is not None
        assert f"removed {demo_dir}" in result.stdout
        assert not demo_dir.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
