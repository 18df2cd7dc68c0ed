"""The swap's floor: ``docker stop old; docker start new`` by hand, on the same port, under a 5 ms probe.

    python -m bench.engine_swap [--rounds 5]

Two containers of the test app (``tests/support/cd_apps.py``'s start script, built from busybox)
publish the same loopback port; the old one serves, the new one is created. Per round it prints how
long the engine's stop and start calls took, when (after the stop began) the probe's last answer
from the old one was sent, when the first request the new one answered was sent and when it was
answered, and how many requests failed, with the 1-minute load average. A first answer that comes
~1 s after its request was sent is a request Docker's proxy accepted before the new container's
network was plugged in (see docs/cd/strategies.md). Nothing of pi-cicd runs here: this is
what the swap strategy cannot go below.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import threading
import time
import uuid
from typing import Any

import docker

from tests.support.cd_apps import START
from tests.support.docker_env import build_context_tar, busybox_dockerfile
from tests.support.ports import free_port

Sample = tuple[float, float, bool, str]  # sent, answered, ok, body


class Probe:
    """GET / with a new connection every 5 ms on a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
                connection.request("GET", "/", headers={"Connection": "close"})
                response = connection.getresponse()
                ok, body = response.status == 200, response.read().decode()
                connection.close()
            except (OSError, http.client.HTTPException) as exc:
                ok, body = False, type(exc).__name__
            self.samples.append((sent, time.monotonic(), ok, body))
            self._stop.wait(0.005)

    def first(self, body: str, timeout: float = 15) -> Sample:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [sample for sample in list(self.samples) if sample[2] and sample[3] == body]
            if found:
                return found[0]
            time.sleep(0.01)
        raise RuntimeError(f"no answer {body!r} within {timeout}s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def one_round(api: Any, image: str, port: int) -> str:
    made: list[str] = []

    def create(name: str) -> str:
        host_config = api.create_host_config(
            port_bindings={"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]},
            restart_policy={"Name": "unless-stopped"},
        )
        created = api.create_container(
            image, name=name, ports=[(8080, "tcp")], host_config=host_config, detach=True,
            environment=[f"APP_VERSION={name}"],
        )
        made.append(created["Id"])
        return str(created["Id"])

    old_name, new_name = f"bench-old-{uuid.uuid4().hex[:8]}", f"bench-new-{uuid.uuid4().hex[:8]}"
    try:
        old = create(old_name)
        api.start(old)
        new = create(new_name)
        probe = Probe(port)
        try:
            probe.first(old_name)
            time.sleep(0.1)
            began = time.monotonic()
            api.stop(old, timeout=2)
            stopped = time.monotonic()
            api.start(new)
            started = time.monotonic()
            sent, answered, _, _ = probe.first(new_name)
            time.sleep(0.05)
        finally:
            probe.close()
        last_old = max(s[0] for s in probe.samples if s[2] and s[3] == old_name)
        failed = sum(1 for s in probe.samples if not s[2])
        return (
            f"stop {stopped - began:.2f}s  start {started - stopped:.2f}s"
            f"  last old answer sent {last_old - began:+.2f}s"
            f"  first new answer sent {sent - began:.2f}s, answered {answered - began:.2f}s  failed {failed:3d}"
            f"  load {os.getloadavg()[0]:.1f}"
        )
    finally:
        for container in made:
            api.remove_container(container, force=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    client = docker.from_env(version="auto")
    image = f"picicd-bench-engine-swap:{uuid.uuid4().hex[:8]}"
    dockerfile = busybox_dockerfile(
        cmd=["/app/start.sh"], env={"APP_VERSION": "x", "GREETING": "hi"}, volumes=["/cache"],
        extra="RUN mkdir -p /www /tmp",
    )
    client.images.build(
        fileobj=build_context_tar(dockerfile, {"app/start.sh": START}), custom_context=True, tag=image, rm=True
    )
    try:
        port = free_port()
        print("docker stop old; docker start new (same port), probe every 5 ms; times from the start of the stop")
        for _ in range(args.rounds):
            print(one_round(client.api, image, port), flush=True)
    finally:
        client.images.remove(image, force=True)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
