"""``scripts/demo`` end to end, as a user runs it, then ``scripts/demo-clean``.

The demo runs in its own folder with its own container names and loopback ports, and reuses this
test's Python environment (``PICICD_DEMO_PYTHON``), so it installs nothing when the machine has
everything. It must end showing 0.1.0 deployed, 0.1.1 upgraded and 0.1.2 rolled back, with the app
still answering 0.1.1, and the blue-green deployment answering 0.1.1 through its Caddy proxy after an
upgrade its 20 ms prober saw no failed request of; nothing in its folder open to other users;
afterwards demo-clean must leave no process, container, network, image or folder.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest

from tests.support.docker_env import unique
from tests.support.ports import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo"
DEMO_CLEAN = ROOT / "scripts" / "demo-clean"
# The first build of the sample image installs Flask from PyPI, and the base image may need debootstrap once.
DEMO_TIMEOUT = 1500


def read_vars(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def alive(pid: int) -> bool:
    """Running (a zombie left for init to reap has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def container_logs(app: str) -> str:
    """The last lines of the blue-green proxy's and app's logs, to explain a failed check."""
    client = docker.from_env(version="auto")
    try:
        said = []
        for name in (f"{app}-proxy", app):
            try:
                said.append(f"--- {name}:\n" + client.containers.get(name).logs(tail=25).decode(errors="replace"))
            except docker.errors.DockerException as exc:
                said.append(f"--- {name}: {exc}")
        return "\n".join(said)
    finally:
        client.close()


@pytest.fixture
def demo_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "PICICD_DEMO_DIR": str(tmp_path / "demo"),
        "PICICD_DEMO_NAME": unique("picicd-demo"),
        "PICICD_DEMO_PYTHON": sys.executable,
        "PICICD_DEMO_APP_PORT": str(free_port()),
        "PICICD_DEMO_CI_PORT": str(free_port()),
        "PICICD_DEMO_CI_DASHBOARD_PORT": str(free_port()),
        "PICICD_DEMO_REGISTRY_PORT": str(free_port()),
        "PICICD_DEMO_SMTP_PORT": str(free_port()),
        "PICICD_DEMO_BLUE_GREEN_PORT": str(free_port()),
    }
    yield env
    # The agents' logs outlive a failed run (demo-clean removes the demo's folder); a passing one leaves none.
    logs = tmp_path / "demo"
    for part in ("logs", "cd/logs", "cd-bluegreen/logs", "ci/logs"):
        if (logs / part).is_dir():
            shutil.copytree(logs / part, tmp_path / "kept-logs" / part)
    # Whatever happened, nothing of this demo outlives the test.
    subprocess.run([str(DEMO_CLEAN)], env={**env, "PICICD_DEMO_QUIET": "1"}, check=False, timeout=120)


@pytest.mark.timeout(DEMO_TIMEOUT + 180)
def test_demo_deploys_upgrades_rolls_back_and_cleans_up(demo_env: dict[str, str]) -> None:
    demo_dir = Path(demo_env["PICICD_DEMO_DIR"])
    result = subprocess.run(
        [str(DEMO)], env=demo_env, cwd=ROOT, capture_output=True, text=True, timeout=DEMO_TIMEOUT, check=False
    )
    output = result.stdout + result.stderr
    (demo_dir.parent / "demo-output.txt").write_text(output)
    assert result.returncode == 0, output[-6000:]

    assert "0.1.0 deployed" in output
    assert "0.1.1 upgraded" in output
    assert "rolled back to 0.1.1 and quarantined" in output
    assert "pushed version 0.1.2" in output
    assert "Subject:" in output
    names = read_vars(demo_dir / "demo.vars")
    answer = httpx.get(f"{names['APP_URL']}/", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["version"] == "0.1.1"
    # The runs the demo printed are on the dashboard listener; the webhook port does not serve them.
    assert f"{names['CI_DASHBOARD_URL']}/" in output
    runs = httpx.get(f"{names['CI_DASHBOARD_URL']}/runs", timeout=10).json()
    assert {run["version"] for run in runs} >= {"0.1.0", "0.1.1", "0.1.2"}
    assert httpx.get(f"{names['CI_URL']}/runs", timeout=10).status_code == 404

    # The blue-green step: 0.1.0 then 0.1.1 behind the proxy, and its prober (a request every 20 ms)
    # counted requests on both versions and not one failure; the swap's count is shown beside it.
    probed = re.search(r"\n +blue-green upgrade 0\.1\.0 → 0\.1\.1: (\d+) requests, (\d+) failed \(answers: ([^;]*);",
                       output)
    assert probed is not None, output[-4000:]
    requests, failed, versions = int(probed[1]), int(probed[2]), probed[3]
    assert (failed, versions) == (0, "0.1.0 → 0.1.1"), probed[0]
    assert requests > 25
    assert re.search(r"\n +swap upgrade 0\.1\.0 → 0\.1\.1: \d+ requests, \d+ failed", output)
    served = httpx.get(f"{names['BG_URL']}/", timeout=10)
    assert served.status_code == 200, f"{served.status_code} {served.text}\n{container_logs(names['BG_CONTAINER'])}"
    assert served.json()["version"] == "0.1.1"

    client = docker.from_env(version="auto")
    try:
        app = client.containers.get(names["CONTAINER"])
        assert app.status == "running"
        assert app.labels.get("io.pi-cicd.version") == "0.1.1"
        # Served through the proxy, publishing nothing itself; 0.1.0 kept stopped for a rollback.
        bg_app = client.containers.get(names["BG_CONTAINER"])
        assert bg_app.status == "running" and bg_app.labels.get("io.pi-cicd.version") == "0.1.1"
        assert not bg_app.attrs["HostConfig"]["PortBindings"]
        assert list(bg_app.attrs["NetworkSettings"]["Networks"]) == [f"{names['BG_CONTAINER']}-net"]
        assert client.containers.get(f"{names['BG_CONTAINER']}-proxy").status == "running"
        kept = client.containers.get(f"{names['BG_CONTAINER']}-previous")
        assert kept.status == "exited" and kept.labels.get("io.pi-cicd.version") == "0.1.0"
        mails = sorted((demo_dir / "mail").glob("*.eml"))
        assert len(mails) >= 3
        subjects = "\n".join(path.read_text(errors="replace") for path in mails)
        for version in ("0.1.0", "0.1.1", "0.1.2"):
            assert version in subjects

        # Everything the demo wrote (consoles, mail, git, registry, agents' logs and state) is root's alone.
        # The CI agent's checkout is the exception inside: its files' modes go into the image, so they are
        # readable (git runs with umask 022 there), in a work folder that is 0700 itself.
        checkouts = demo_dir / "ci" / "state" / "work"
        assert (demo_dir.stat().st_uid, stat.S_IMODE(demo_dir.stat().st_mode)) == (0, 0o700)
        assert stat.S_IMODE(checkouts.stat().st_mode) == 0o700
        open_to_others = [f"{path} {oct(stat.S_IMODE(path.lstat().st_mode))}" for path in demo_dir.rglob("*")
                          if not path.is_symlink() and path.lstat().st_mode & 0o077
                          and not path.is_relative_to(checkouts)]
        assert not open_to_others, open_to_others[:20]

        pids = [int(path.read_text()) for path in (demo_dir / "pids").glob("*.pid")]
        assert len(pids) == 4  # registry, SMTP sink, ci-agent, cd-agent
        assert all(alive(pid) for pid in pids)

        clean = subprocess.run([str(DEMO_CLEAN)], env=demo_env, capture_output=True, text=True, timeout=120,
                               check=False)
        assert clean.returncode == 0, clean.stdout + clean.stderr

        assert not demo_dir.exists()
        assert not [pid for pid in pids if alive(pid)]
        assert not client.containers.list(all=True, filters={"name": demo_env["PICICD_DEMO_NAME"]})
        assert not client.networks.list(names=[f"{names['BG_CONTAINER']}-net"])
        assert not client.images.list(name=names["IMAGE"])
    finally:
        client.close()
