"""Real GitHub webhook payloads kept in the repository (``tests/fixtures/github``; sources in its README)."""

from __future__ import annotations

from pathlib import Path

GITHUB_PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "github"
