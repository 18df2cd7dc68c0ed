"""What one watcher poll costs: wall time, HTTP requests and bytes on the wire, against a local registry.

    python -m bench.poll_cost                  # starts a throw-away docker-registry with 30 tags
    python -m bench.poll_cost --tags 300 --polls 200
    python -m bench.poll_cost --image 127.0.0.1:5000/owner/app   # an existing repository

Prints numbers for an idle poll (the deployed version is the newest: ``tags/list`` only) and for a poll
that finds a candidate (``tags/list`` + one ``HEAD``; the deploy itself is left out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from loguru import logger

from cd_agent.apps import single_target
from cd_agent.settings import CdSettings
from cd_agent.state import DeployState, Release
from cd_agent.watcher import Watcher
from shared.registry import RegistryClient, parse_image_ref
from shared.settings import load_settings
from shared.versions import highest
from tests.support.registry_server import RegistryServer, start_registry


class CountingTransport(httpx.BaseTransport):
    """Counts requests and the bytes of requests and answers (start line, headers, body)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests = 0
        self.sent = 0
        self.received = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.sent += len(f"{request.method} {request.url.raw_path.decode()} HTTP/1.1\r\n")
        self.sent += sum(len(k) + len(v) + 4 for k, v in request.headers.raw) + 2 + len(request.content)
        response = self.inner.handle_request(request)
        body = response.read()
        self.received += len(f"HTTP/1.1 {response.status_code}\r\n")
        self.received += sum(len(k) + len(v) + 4 for k, v in response.headers.raw) + 2 + len(body)
        return httpx.Response(response.status_code, headers=response.headers, content=body, request=request)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Noop:
    outcome: str = "noop"
    error: str | None = None


class NoDeploy:
    def deploy(self, version: str, *, digest: str | None = None, force: bool = False) -> Noop:
        return Noop()


def populate(registry: RegistryServer, repository: str, count: int) -> None:
    """Push ``count`` tags (1.0.0, 1.0.1, ...) of a tiny image straight through the registry API."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    config_bytes = config.encode()
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    with httpx.Client(base_url=registry.url, timeout=30) as http:
        start = http.post(f"/v2/{repository}/blobs/uploads/")
        start.raise_for_status()
        upload = httpx.URL(registry.url).join(start.headers["location"])
        http.put(upload.copy_merge_params({"digest": config_digest}), content=config_bytes).raise_for_status()
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config_bytes), "digest": config_digest,
            },
            "layers": [],
        })
        for index in range(count):
            tag = f"1.{index // 100}.{index % 100}"
            http.put(
                f"/v2/{repository}/manifests/{tag}", content=manifest,
                headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"},
            ).raise_for_status()


def measure(watcher: Watcher, transport: CountingTransport, polls: int) -> dict[str, float]:
    transport.requests = transport.sent = transport.received = 0
    durations = []
    for _ in range(polls):
        began = time.perf_counter()
        watcher.poll_once()
        durations.append(time.perf_counter() - began)
    durations.sort()
    return {
        "ms_mean": statistics.mean(durations) * 1000,
        "ms_p50": durations[len(durations) // 2] * 1000,
        "ms_p95": durations[int(len(durations) * 0.95) - 1] * 1000,
        "requests": transport.requests / polls,
        "bytes_sent": transport.sent / polls,
        "bytes_received": transport.received / polls,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", help="an existing repository (default: a throw-away registry)")
    parser.add_argument("--tags", type=int, default=30, help="tags to create in the throw-away registry")
    parser.add_argument("--polls", type=int, default=100)
    args = parser.parse_args()
    logger.remove()

    with tempfile.TemporaryDirectory(prefix="poll-cost-") as scratch:
        root = Path(scratch)
        server = None
        image = args.image
        if image is None:
            server = start_registry(root / "registry")
            image = f"{server.host}/bench/app"
            populate(server, "bench/app", args.tags)
        try:
            settings = load_settings(
                CdSettings, {"CD_IMAGE": image, "CD_CONTAINER_NAME": "bench", "STATE_DIR": str(root / "state")}
            )
            transport = CountingTransport()
            with RegistryClient(parse_image_ref(image), transport=transport) as client, \
                    DeployState(single_target(settings).paths.state) as state:
                tags = client.list_tags()
                newest = highest(tags)
                if newest is None:
                    print(f"{image} has no release tags", file=sys.stderr)
                    return 1
                watcher = Watcher(single_target(settings), client, NoDeploy(), state)
                print(f"{image}: {len(tags)} tags, newest {newest}, {args.polls} polls each")
                state.set_current(Release(str(newest)))
                idle = measure(watcher, transport, args.polls)
                state.set_current(None)
                candidate = measure(watcher, transport, args.polls)
            for name, numbers in (("idle poll", idle), ("poll with a candidate", candidate)):
                print(
                    f"{name:>22}: {numbers['ms_mean']:6.2f} ms mean, {numbers['ms_p50']:6.2f} p50, "
                    f"{numbers['ms_p95']:6.2f} p95 | {numbers['requests']:.1f} requests, "
                    f"{numbers['bytes_sent']:.0f} B sent, {numbers['bytes_received']:.0f} B received"
                )
        finally:
            if server is not None:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
