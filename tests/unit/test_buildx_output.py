"""What ci_agent/buildx.py reads of BuildKit's plain progress and of the Dockerfile (pure parsing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci_agent.buildx import _FROM_LINE, _WRAPPERS, _pinned_stages

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("line", "stage", "ref"),
    [
        (f"#4 [base 1/2] FROM host:5000/o/busybox:1.0@{DIGEST}", "base", f"host:5000/o/busybox:1.0@{DIGEST}"),
        (f"#5 [1/3] FROM docker.io/library/python:3.11@{DIGEST}", None, f"docker.io/library/python:3.11@{DIGEST}"),
        (f"#7 [stage-2 1/1] FROM x@{DIGEST}", "stage-2", f"x@{DIGEST}"),
    ],
)
def test_resolved_base_images_are_read_with_their_stage(line: str, stage: str | None, ref: str):
    match = _FROM_LINE.match(line)
    assert match is not None and (match["stage"], match["ref"]) == (stage, ref)


@pytest.mark.parametrize(
    "line",
    [
        "#4 [base 1/2] FROM host:5000/o/busybox:1.0",  # a local image of the right platform: no digest
        f"#4 resolve host:5000/o/busybox:1.0@{DIGEST} 0.0s done",
        f"#4 0.3 FROM x@{DIGEST}",  # a RUN's own output
    ],
)
def test_other_lines_are_not_base_images(line: str):
    assert _FROM_LINE.match(line) is None


def test_stages_with_their_own_platform_are_named_as_buildkit_names_them(tmp_path: Path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM --platform=$BUILDPLATFORM golang:1.22 AS Build\nRUN go build\n"
        "FROM --platform=linux/amd64 tools:1\n"
        "FROM alpine AS final\nCOPY --from=build /app /app\n"
    )
    assert _pinned_stages(dockerfile) == {"build", "stage-1"}
    dockerfile.write_text("FROM --platform=linux/amd64 alpine\nRUN true\n")
    assert _pinned_stages(dockerfile) == {""}
    assert _pinned_stages(tmp_path / "missing") == set()


def test_grpc_and_frontend_wrappers_are_dropped_from_the_reason():
    line = ("failed to solve: rpc error: code = Unknown desc = failed to solve with frontend dockerfile.v0: "
            "failed to create LLB definition: no match for platform in manifest sha256:ab: not found")
    assert _WRAPPERS.sub("", line) == "failed to solve: no match for platform in manifest sha256:ab: not found"
