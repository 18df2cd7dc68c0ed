"""A second Docker engine on this machine, and an sshd in front of it, for CI_BUILD_DOCKER_HOST.

``second_engine`` is a real ``dockerd`` with its own socket, data root, exec root and pidfile, started once per
session under a temporary folder, on a bridge of its own and without iptables rules, so it leaves the machine's
network and the shared dockerd alone. Not ``--bridge=none``: dockerd then *deletes* an existing ``docker0``
(``removeDefaultBridgeInterface``), which cuts every container of the shared engine off its default network.
It reaches the test registry on 127.0.0.1 like any engine (127.0.0.0/8 is an insecure registry by default).
``ssh_engine`` is Debian's sshd on a loopback port with a host key and an authorized key made by the test;
its sessions get ``DOCKER_HOST`` of the second engine (sshd's ``SetEnv``), so
``ssh://root@127.0.0.1:PORT`` reaches that engine as ``docker system dial-stdio`` would on a remote machine.
The client side (paramiko, through the Docker SDK) reads ``$HOME/.ssh``: ``ssh_home`` is that folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from tests.support.polling import wait_for
from tests.support.ports import free_port, port_open


@dataclass
class Engine:
    """A running second ``dockerd``."""

    root: Path
    process: subprocess.Popen[bytes]
    bridge: str

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> Any:
        return docker.DockerClient(base_url=self.host, version="auto")

    def log(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")


def _answers(host: str) -> bool:
    # docker-py leaks the socket of a failed unix connect, and of a failed "auto" version negotiation.
    if not Path(host.removeprefix("unix://")).exists():
        return False
    client = docker.APIClient(base_url=host, version="1.24", timeout=2)
    try:
        client.ping()
    except (docker.errors.DockerException, requests.RequestException):
        return False
    finally:
        client.close()
    return True


# The second engine's default network: outside dockerd's default pools (172.17-31.x, 192.168.x), so it can
# never overlap a network the shared engine makes. Nothing is ever sent to it from outside the bridge.
# One /24 per xdist worker (gw0: 10.199.254.0/24, gw1: .253, ...): each worker starts its own second
# engine, and two bridges claiming one subnet would send one engine's replies to the other's bridge.
def _engine_bridge_address() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return f"10.199.{254 - int(worker.removeprefix('gw'))}.1/24"


def _add_bridge() -> str:
    name = f"pcb{uuid.uuid4().hex[:8]}"  # IFNAMSIZ: at most 15 characters
    for argv in (
        ["ip", "link", "add", name, "type", "bridge"],
        ["ip", "addr", "add", _engine_bridge_address(), "dev", name],
        ["ip", "link", "set", name, "up"],
    ):
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
    return name


def _remove_bridge(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], check=False, capture_output=True, timeout=30)


def start_engine(root: Path) -> Engine:
    """A second ``dockerd`` under ``root`` (socket, data root, exec root, pidfile); ``stop_engine`` ends it."""
    root.mkdir(parents=True, exist_ok=True)
    bridge = _add_bridge()
    with (root / "dockerd.log").open("ab") as log:
        process = subprocess.Popen(
            [
                shutil.which("dockerd") or "/usr/sbin/dockerd", "--host", f"unix://{root / 'docker.sock'}",
                "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
                "--pidfile", str(root / "docker.pid"), f"--bridge={bridge}", "--iptables=false", "--ip-masq=false",
            ],
            stdout=log, stderr=log,
        )
    engine = Engine(root, process, bridge)
    try:
        wait_for(lambda: _answers(engine.host), timeout=60, what="the second dockerd")
    except BaseException:
        stop_engine(engine)
        raise
    return engine


def stop_engine(engine: Engine) -> None:
    engine.process.terminate()
    try:
        engine.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        engine.process.kill()
        engine.process.wait()
    _remove_bridge(engine.bridge)
    shutil.rmtree(engine.root / "data", ignore_errors=True)


@pytest.fixture(scope="session")
def second_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = start_engine(tmp_path_factory.mktemp("engine2"))
    try:
        yield engine
    finally:
        stop_engine(engine)


@dataclass
class SshEngine:
    """sshd on ``port`` whose sessions reach ``engine``; ``home`` holds the client's ``.ssh``."""

    port: int
    home: Path
    engine: Engine

    @property
    def host(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="session")
def ssh_engine(tmp_path_factory: pytest.TempPathFactory, second_engine: Engine) -> Iterator[SshEngine]:
    root = tmp_path_factory.mktemp("sshd")
    home = root / "home"
    (home / ".ssh").mkdir(parents=True)
    _keygen(root / "host_key")
    _keygen(home / ".ssh" / "id_ed25519")
    (root / "authorized_keys").write_text((home / ".ssh" / "id_ed25519.pub").read_text())
    port = free_port()
    host_key = (root / "host_key.pub").read_text().split()
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"SetEnv DOCKER_HOST={second_engine.host}\n"
        # The Docker SDK opens an ssh session per HTTP connection of its pool over one ssh connection;
        # sshd's default of 10 sessions per connection ran out during a build ("no more sessions").
        "MaxSessions 64\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    with (root / "sshd.log").open("ab") as log:
        process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    try:
        wait_for(lambda: port_open(port), timeout=20, what=f"sshd on port {port}")
        yield SshEngine(port, home, second_engine)
    finally:
        process.terminate()
        process.wait(timeout=10)
