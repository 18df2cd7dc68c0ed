"""What the four OCI labels cost a build with Docker's legacy builder (the one the SDK drives).

    python -m bench.build_labels              # 7 rounds, alternating
    python -m bench.build_labels --rounds 15

``ci_agent/builder.py`` passes the labels as the build API's ``labels`` parameter, not as LABEL
lines in the Dockerfile. The legacy builder still turns that parameter into one extra ``LABEL``
step at the end (one container created and committed for all labels together, never cached, as
``.revision`` and ``.created`` change every run). Each round builds the same small busybox image
(every other layer cached) once with the labels and once without, and prints the medians and the
builder's step counts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import docker

from tests.support.docker_env import build_context_tar, busybox_dockerfile


def build(client: Any, tag: str, labels: dict[str, str] | None) -> tuple[float, int]:
    """Seconds for one build, and the number of steps the builder reported."""
    context = build_context_tar(busybox_dockerfile(cmd=["/bin/sh", "-c", "echo hi"], extra="RUN mkdir -p /www"))
    began = time.monotonic()
    steps = 0
    for chunk in client.api.build(fileobj=context, custom_context=True, tag=tag, labels=labels, rm=True,
                                  forcerm=True, decode=True):
        if "error" in chunk:
            raise RuntimeError(chunk["error"])
        if str(chunk.get("stream", "")).startswith("Step "):
            steps += 1
    return time.monotonic() - began, steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    client = docker.from_env(version="auto")
    tag = f"picicd-bench-labels-{uuid.uuid4().hex[:8]}:latest"
    times: dict[str, list[float]] = {"with labels": [], "without": []}
    steps: dict[str, int] = {}
    try:
        build(client, tag, None)  # warm the cache: only the label step differs from here on
        for _ in range(args.rounds):
            labels = {
                "org.opencontainers.image.revision": uuid.uuid4().hex,
                "org.opencontainers.image.source": "https://example.invalid/app",
                "org.opencontainers.image.version": "0.1.0",
                "org.opencontainers.image.created": datetime.now(UTC).isoformat(),
            }
            for name, value in (("with labels", labels), ("without", None)):
                seconds, count = build(client, tag, value)
                times[name].append(seconds)
                steps[name] = count
    finally:
        try:
            client.images.remove(tag, force=True)
        finally:
            client.close()
    for name, values in times.items():
        print(f"{name:12} median {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f}), "
              f"{steps[name]} builder steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
