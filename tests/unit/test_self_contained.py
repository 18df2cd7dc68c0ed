"""A user's clone has only the repository: nothing in it may read files from outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The team folder beside a checkout, named as a path or built as parents[N] / <dot-dot> / "shared".
# Spelled in pieces so that this file does not name it itself.
_UP = re.escape("..")
_OUTSIDE = re.compile(_UP + r"/shared|[\"']" + _UP + r"[\"']\s*/\s*[\"']shared[\"']")


def tracked_files() -> list[Path]:
    output = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in output.decode().split("\0") if name]


def test_no_file_reads_the_team_folder_outside_the_repository():
    offenders = []
    for path in tracked_files():
        if path.suffix == ".md" or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1)
                      if _OUTSIDE.search(line)]
    assert offenders == []


def test_the_github_payload_fixtures_are_in_the_repository():
    from tests.support.payloads import GITHUB_PAYLOADS

    assert sorted(p.name for p in GITHUB_PAYLOADS.glob("*.json")) == [
        "ping_payload.json", "ping_with-app_id.payload.json", "push_payload.json", "push_with-new-branch.payload.json",
    ]
