"""deploy/systemd/*.service under a real systemd, installed the way the docs say (docs/pi/index.md).

``systemd-analyze verify`` checks both units on this machine. Then, for each agent, a container whose
PID 1 is systemd (``scripts/systemd-test-image``: the local Debian base plus systemd and a venv holding
the dependencies, cached under one tag) runs the docs' install block from a copy of this checkout,
with the host's Docker socket mounted and host networking (so the test registry and the agent's port
are on the same loopback as on a Pi). The agent must come up as ``picicd`` with the socket's group,
answer, do real work through dockerd (a CI run that tests, builds and pushes; a CD deploy), write its
run log under ``/var/log/pi-cicd/{ci,cd}``, and be restarted by systemd after ``kill -9``.

The container needs CAP_SYS_ADMIN, no seccomp/AppArmor profile and the host's cgroup tree read-write
(``--privileged`` is not needed, and fails on hosts whose bounding set lacks a capability).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cd_apps import CdWorld
from tests.support.ci_agent_server import (
    GITHUB_REPO,
    WEBHOOK_SECRET,
    CiAgentProcess,
    push_payload,
    registry_tags,
)
from tests.support.docker_env import unique
from tests.support.git_repos import GitProject
from tests.support.polling import wait_for
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
UNITS = {"ci-agent": REPO / "deploy/systemd/ci-agent.service", "cd-agent": REPO / "deploy/systemd/cd-agent.service"}
SOCKET = Path("/var/run/docker.sock")
# What the docs' install block needs from a clone: the package sources, the units and the README it installs.
CHECKOUT_PARTS = (
    "pyproject.toml",
    "README.md",
    "deploy",
    *tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"],
)
# A Debian host's PATH: the base image puts its own Python venv first, a host has no such thing.
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The page of the documentation site that holds the install block and the alias (it was the README's section).
INSTALL_PAGE = REPO / "docs" / "pi" / "index.md"
INSTALL_SECTION = "## Running the agents on the host with systemd"


def systemd_unit_dir() -> Path:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "multi-user.target").exists():
            return candidate
    pytest.fail("systemd's unit directory is missing: apt-get install systemd (.ci/run installs it)")


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` in a root holding systemd's units, the agents' units and their ExecStart."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (.ci/run installs it)")
    root = tmp_path / "root"
    shutil.copytree(systemd_unit_dir(), root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "opt/pi-cicd/bin").mkdir(parents=True)
    (root / "bin").mkdir()
    for name, unit in UNITS.items():
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
        executable = root / "opt/pi-cicd/bin" / name
        executable.write_text("#!/bin/sh\n")
        executable.chmod(0o755)
    # Both units' ExecReload=/bin/sh -c "kill -HUP ${MAINPID}" (`systemctl reload` re-reads the apps / repos file)
    shutil.copy(shutil.which("sh") or "/bin/sh", root / "bin" / "sh")
    result = subprocess.run(
        [analyze, "verify", f"--root={root}", "--man=no", *(unit.name for unit in UNITS.values())],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify exits 0 on unknown keys and bad values (it only warns), so any output is a finding.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# --- a real systemd ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def systemd_image() -> str:
    """The cached image (.ci/run builds it during setup; the first build here takes a minute or two)."""
    result = subprocess.run(
        [str(REPO / "scripts/systemd-test-image")], capture_output=True, text=True, check=False, timeout=1200
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/systemd-test-image failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


class SystemdHost:
    """A container booted with systemd as PID 1, standing in for a Pi that runs the agents on the host."""

    def __init__(self, container: Any) -> None:
        self.container = container

    def sh(self, script: str, *, check: bool = True, environment: dict[str, str] | None = None) -> str:
        code, output = self.container.exec_run(
            ["sh", "-c", script], environment={"PATH": HOST_PATH, **(environment or {})}, workdir="/root"
        )
        text = output.decode(errors="replace")
        if check and code != 0:
            raise AssertionError(f"`{script}` exited {code}:\n{text[-4000:]}")
        return str(text)

    def put(self, directory: str, files: dict[str, bytes], mode: int = 0o644) -> None:
        self.sh(f"mkdir -p {directory}")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
        assert self.container.put_archive(directory, buffer.getvalue())

    def put_tree(self, directory: str, tar_bytes: bytes) -> None:
        self.sh(f"mkdir -p {directory}")
        assert self.container.put_archive(directory, tar_bytes)

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value {unit}").strip()

    def journal(self, unit: str) -> str:
        return self.sh(f"journalctl -u {unit} --no-pager -n 80", check=False)


def checkout_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for part in CHECKOUT_PARTS:
            tar.add(REPO / part, arcname=part, filter=lambda info: None if "__pycache__" in info.name else info)
    return buffer.getvalue()


def directory_tar(path: Path, arcname: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname=arcname)
    return buffer.getvalue()


@pytest.fixture
def systemd_host(docker_client: Any, systemd_image: str) -> Iterator[SystemdHost]:
    name = unique("picicd-systemd")
    cgroup_version = str(docker_client.info().get("CgroupVersion", "1"))
    container = docker_client.containers.run(
        systemd_image,
        name=name,
        detach=True,
        # What systemd as PID 1 needs (mounts, namespaces for the units' sandboxing, its cgroup tree),
        # without --privileged.
        cap_add=["SYS_ADMIN"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        cgroupns="host",
        tmpfs={"/run": "", "/run/lock": "", "/tmp": ""},
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            str(SOCKET): {"bind": "/var/run/docker.sock", "mode": "rw"},
        },
        network_mode="host",
    )
    host = SystemdHost(container)
    try:

        def booted() -> bool:
            container.reload()
            if container.status != "running":
                raise AssertionError(f"systemd exited (cgroup v{cgroup_version}):\n{container.logs()[-3000:]!r}")
            # Until PID 1 has made its socket, systemctl answers "Failed to connect to bus".
            return host.sh("systemctl is-system-running --wait", check=False).strip() in ("running", "degraded")

        wait_for(booted, timeout=60, interval=0.2, what=f"systemd to boot in {name}")
        yield host
    finally:
        container.remove(force=True, v=True)


def install_section() -> str:
    page = INSTALL_PAGE.read_text()
    assert INSTALL_SECTION in page, f"{INSTALL_PAGE.relative_to(REPO)} lost its section {INSTALL_SECTION!r}"
    return page.split(INSTALL_SECTION, 1)[1].split("\n## ", 1)[0]


def install_script(agent: str, env_file: str) -> str:
    """The docs' install block, for a machine running only ``agent``, with the env file filled in."""
    found = re.search(r"```sh\n(.*?)```", install_section(), re.S)
    assert found, "the systemd section of docs/pi/index.md has no ```sh block"
    lines: list[str] = []
    seen = {"apt-get": False, "venv": False, "editor": False, "enable": False}
    for line in found.group(1).splitlines():
        command = line.split("#", 1)[0].strip()
        if command.startswith("apt-get install"):
            # Done when the image was built; docker.io is the host's dockerd behind the socket.
            seen["apt-get"] = True
            continue
        if command == "python3 -m venv /opt/pi-cicd":
            # Also done when the image was built (again it would only reinstall pip, ~15 s).
            seen["venv"] = True
            continue
        if command.startswith("$EDITOR"):
            seen["editor"] = True
            lines.append(f"cat /root/staged/{env_file} > /etc/pi-cicd/{env_file}")
            continue
        if command.startswith("systemctl enable --now"):
            if f"{agent}.service" not in command:
                continue  # "Install only the unit you need on each machine."
            seen["enable"] = True
        if command.startswith("journalctl") and command.endswith("-f"):
            continue  # follows forever
        lines.append(line)
    assert all(seen.values()), f"the install block of docs/pi/index.md changed shape: {seen}"
    return "\n".join(lines) + "\n"


def install_agent(host: SystemdHost, agent: str, env_file: str, settings: dict[str, str]) -> None:
    # docker.io on a real host creates the `docker` group owning the socket; here it must be the socket's gid.
    host.sh(f"groupadd --system --gid {SOCKET.stat().st_gid} docker")
    host.put_tree("/root/pi-cicd", checkout_tar())
    host.put("/root/staged", {env_file: "".join(f"{k}={v}\n" for k, v in settings.items()).encode()}, 0o600)
    script = install_script(agent, env_file)
    # Offline: the image's venv already holds the dependencies and setuptools.
    host.sh(
        f"cd /root/pi-cicd && set -eux\n{script}",
        environment={"PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert host.sh(f"stat -c '%a %U' /etc/pi-cicd/{env_file}").strip() == "600 root"


def assert_verified_in_place(host: SystemdHost, agent: str) -> None:
    """``systemd-analyze verify`` on the installed unit, with its real user, group and ExecStart."""
    output = host.sh(f"systemd-analyze verify --man=no /etc/systemd/system/{agent}.service 2>&1")
    assert output == ""
    # verify does not follow file: links; the install block must have put the documentation there.
    for link in host.show(agent, "Documentation").split():
        if link.startswith("file://"):
            host.sh(f"test -s {link.removeprefix('file://')}")


def wait_active(host: SystemdHost, agent: str, *, not_pid: str = "") -> str:
    """Wait for the unit to be active with a main process (other than ``not_pid``); return its PID."""

    def running() -> str:
        if host.show(agent, "ActiveState") == "failed":
            raise AssertionError(f"{agent} failed:\n{host.journal(agent)}")
        pid = host.show(agent, "MainPID")
        return pid if host.show(agent, "ActiveState") == "active" and pid not in ("", "0", not_pid) else ""

    try:
        return wait_for(running, timeout=60, interval=0.2, what=f"{agent} active")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{host.journal(agent)}") from None


def wait_with_journal(host: SystemdHost, agent: str, condition: Callable[[], object], what: str) -> None:
    try:
        wait_for(condition, timeout=120, interval=0.3, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{host.journal(agent)}") from None


def assert_runs_as_picicd_with_docker_group(host: SystemdHost, pid: str) -> None:
    status = host.sh(f"cat /proc/{pid}/status")
    uid = host.sh("id -u picicd").strip()
    groups = re.search(r"^Groups:\s*(.*)$", status, re.M)
    assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s", status, re.M), status
    assert groups and str(SOCKET.stat().st_gid) in groups.group(1).split(), status
    assert re.search(r"^CapEff:\s+0+$", status, re.M), status  # CapabilityBoundingSet= left none


def assert_memory_capped(host: SystemdHost, pid: str, limit: int) -> None:
    """MemoryMax= reached the kernel: the cgroup systemd made for the unit carries the limit."""
    lines = [line.split(":", 2) for line in host.sh(f"cat /proc/{pid}/cgroup").splitlines()]
    v1 = [path for _, controllers, path in lines if "memory" in controllers.split(",")]
    limit_file = (
        f"/sys/fs/cgroup/memory{v1[0]}/memory.limit_in_bytes"
        if v1
        else f"/sys/fs/cgroup{next(path for _, controllers, path in lines if controllers == '')}/memory.max"
    )
    assert host.sh(f"cat {limit_file}").strip() == str(limit), limit_file


def kill_and_wait_restart(host: SystemdHost, agent: str, pid: str) -> str:
    restarts = int(host.show(agent, "NRestarts"))
    host.sh(f"kill -9 {pid}")
    new_pid = wait_active(host, agent, not_pid=pid)
    assert int(host.show(agent, "NRestarts")) == restarts + 1
    return new_pid


def run_log_files(host: SystemdHost, directory: str) -> list[str]:
    return host.sh(f"find {directory} -name '*_run-*.log' | sort").split()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.exclusive("systemd as PID 1 with the host's cgroup tree read-write and the host's network")
def test_ci_agent_unit_under_systemd(
    git_project: GitProject, ci_image_name: str, systemd_host: SystemdHost
) -> None:
    # systemd_host last: set up last, so torn down first, before the janitors remove what the agent made.
    host = systemd_host
    sha = git_project.commit_sample()
    # The pushed-to repository, readable by picicd as GitHub's would be (git refuses other owners' repos).
    host.put_tree("/srv/git", directory_tar(git_project.bare, "origin.git"))
    port, dashboard_port = free_port(), free_port()
    install_agent(
        host,
        "ci-agent",
        "ci.env",
        {
            "CI_REPO_URL": "file:///srv/git/origin.git",
            "CI_BRANCH": git_project.branch,
            "CI_GITHUB_REPO": GITHUB_REPO,
            "CI_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "CI_IMAGE": ci_image_name,
            "CI_TEST_COMMAND": "sh /tests/run.sh",
            "CI_HOST": "127.0.0.1",
            "CI_PORT": str(port),
            "CI_DASHBOARD_PORT": str(dashboard_port),
        },
    )
    host.sh("chown -R picicd: /srv/git")
    assert_verified_in_place(host, "ci-agent")
    pid = wait_active(host, "ci-agent")
    assert_runs_as_picicd_with_docker_group(host, pid)
    assert_memory_capped(host, pid, 512 * 1024 * 1024)  # the docs' MemoryMax for ci-agent
    url = f"http://127.0.0.1:{port}"
    # The run API is on the private dashboard listener (loopback), never on the webhook port.
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    wait_for(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, timeout=60, what="ci-agent /healthz")

    # A whole run through the socket: test stage, build, push.
    raw = json.dumps(push_payload(git_project, sha, "initial sample app")).encode()
    response = httpx.post(f"{url}/webhook", content=raw, headers=CiAgentProcess.headers(raw), timeout=10)
    assert response.status_code == 202, response.text
    number = response.json()["run"]

    def finished() -> dict[str, Any]:
        run: dict[str, Any] = httpx.get(f"{dashboard}/runs/{number}", timeout=5).json()
        return run if run["status"] in ("succeeded", "failed", "superseded", "interrupted") else {}

    run = wait_for(finished, timeout=180, interval=0.3, what=f"run {number} to finish")
    log_path = str(run["log_path"])
    log = host.sh(f"cat {log_path}")
    assert run["status"] == "succeeded", log
    assert log_path.startswith("/var/log/pi-cicd/ci/") and "sample tests passed" in log
    assert run_log_files(host, "/var/log/pi-cicd/ci") == [log_path]
    assert "0.1.0" in registry_tags(ci_image_name)
    # The env file is the only place the secret may be: not the journal, not the run log.
    journal = host.sh("journalctl -u ci-agent --no-pager")
    assert "serving on" in journal and WEBHOOK_SECRET not in journal + log

    # `systemctl reload` is ExecReload's SIGHUP: the same process goes on (without CI_REPOS_FILE it only says so).
    host.sh("systemctl reload ci-agent")
    wait_for(lambda: "reload: nothing to read again" in host.sh("journalctl -u ci-agent --no-pager"), timeout=30,
             what="the reload logged")
    assert wait_active(host, "ci-agent") == pid

    kill_and_wait_restart(host, "ci-agent", pid)
    wait_for(
        lambda: httpx.get(f"{dashboard}/runs/{number}", timeout=2).status_code == 200, timeout=60, what="ci-agent back"
    )
    # State survived the restart (StateDirectory=), so the finished run is still there.
    assert httpx.get(f"{dashboard}/runs/{number}", timeout=5).json()["status"] == "succeeded"


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.exclusive("systemd as PID 1 with the host's cgroup tree read-write and the host's network")
def test_cd_agent_unit_under_systemd(cd_world: CdWorld, systemd_host: SystemdHost) -> None:
    # systemd_host last: torn down first, so the agent cannot redeploy the app the janitor removes.
    host = systemd_host
    cd_world.releases.push("1.0.0")
    settings = {
        key: value for key, value in cd_world.environ().items() if key not in ("LOG_DIR", "STATE_DIR")
    } | {"CD_POLL_INTERVAL": "1"}
    install_agent(host, "cd-agent", "cd.env", settings)
    assert_verified_in_place(host, "cd-agent")
    pid = wait_active(host, "cd-agent")
    assert_runs_as_picicd_with_docker_group(host, pid)
    assert_memory_capped(host, pid, 256 * 1024 * 1024)  # the docs' MemoryMax for cd-agent

    wait_with_journal(host, "cd-agent", lambda: cd_world.served() == "1.0.0", "1.0.0 deployed by the unit")
    logs = wait_for(lambda: run_log_files(host, "/var/log/pi-cicd/cd"), timeout=30, what="a cd run log")
    assert "1.0.0" in host.sh(f"cat {logs[-1]}")
    assert host.sh("ls /var/lib/pi-cicd/cd").split(), "no state in StateDirectory"
    # The docs' way to run `cd-agent status` next to the service (as picicd, with its settings).
    alias = re.search(r"^alias cd-agent=.*$", install_section(), re.M)
    assert alias, "the systemd section of docs/pi/index.md lost its cd-agent alias"
    status_command = f"{alias.group(0)}\ncd-agent status --json"

    # Served comes before kept: the release is recorded as current once its health check passed.
    def current() -> str:
        status = json.loads(host.sh(status_command))
        return str((status["current"] or {}).get("version", ""))

    wait_for(lambda: current() == "1.0.0", timeout=60, interval=0.3, what="cd-agent status naming 1.0.0 as current")
    assert host.sh("find /var/lib/pi-cicd/cd ! -user picicd") == "", "files not owned by picicd in the state"

    kill_and_wait_restart(host, "cd-agent", pid)
    # The restarted agent still polls and deploys.
    cd_world.releases.push("1.0.1")
    wait_with_journal(host, "cd-agent", lambda: cd_world.served() == "1.0.1", "1.0.1 deployed after the restart")
