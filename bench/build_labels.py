"""What the four OCI labels cost a build with Docker's legacy builder (the one the SDK drives).

    python -m bench.build_labels              # 7 rounds, alternating
    python -m bench.build_labels --rounds 15

The legacy builder turns each entry of the build API's ``labels`` parameter into a ``LABEL`` step
of its own (a container created and committed each, never cached, as ``.revision`` and ``.created``
change every run); ``ci_agent/builder.py`` therefore appends one ``LABEL`` line with all four to the
Dockerfile instead (``ci_agent/label_line.py``). Each round builds the same small busybox image
(every other layer cached) three ways, and prints the medians and the builder's step counts.
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

from ci_agent.label_line import with_labels
from tests.support.docker_env import build_context_tar, busybox_dockerfile

DOCKERFILE = busybox_dockerfile(cmd=["/bin/sh", "-c", "echo hi"], extra="RUN mkdir -p /www")


def build(client: Any, tag: str, labels: dict[str, str] | None, dockerfile: str = DOCKERFILE) -> tuple[float, int]:
    """Seconds for one build, and the number of steps the builder reported."""
    context = build_context_tar(dockerfile)
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
    times: dict[str, list[float]] = {"labels parameter": [], "one LABEL line": [], "no labels": []}
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
            one_line = with_labels(DOCKERFILE, labels)
            assert one_line is not None
            variants = (("labels parameter", labels, DOCKERFILE), ("one LABEL line", None, one_line),
                        ("no labels", None, DOCKERFILE))
            for name, value, dockerfile in variants:
                seconds, count = build(client, tag, value, dockerfile)
                times[name].append(seconds)
                steps[name] = count
    finally:
        try:
            client.images.remove(tag, force=True)
        finally:
            client.close()
    for name, values in times.items():
        print(f"{name:16} median {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f}), "
              f"{steps[name]} builder steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
