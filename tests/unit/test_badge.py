"""The status badge: which run decides it, and the SVG it draws."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import pytest

from ci_agent.dashboard import Badge, badge_for, render_badge
from shared.runstore import Run

SVG = "{http://www.w3.org/2000/svg}"
MAIN = "refs/heads/main"


def run(number: int, status: str, ref: str | None = MAIN, version: str | None = None) -> Run:
    fields: dict[str, Any] = {
        "number": number, "status": status, "kind": "ci", "commit": "a" * 40, "ref": ref, "version": version,
        "failed_step": None, "delivery_id": None, "created_at": datetime(2025, 1, 1, tzinfo=UTC),
        "started_at": None, "finished_at": None, "log_path": None, "error": None,
    }
    return Run(**fields)


def newest_first(*runs: Run) -> list[Run]:
    return sorted(runs, key=lambda r: r.number, reverse=True)


def test_no_runs_is_unknown_without_version():
    assert badge_for([], "main") == Badge("unknown", None)


def test_last_success_is_passing_with_its_version():
    runs = newest_first(run(1, "failed"), run(2, "succeeded", version="0.1.1"))
    assert badge_for(runs, "main") == Badge("passing", "0.1.1")


def test_last_failure_is_failing_and_keeps_the_latest_released_version():
    runs = newest_first(run(1, "succeeded", version="0.1.0"), run(2, "failed"))
    assert badge_for(runs, "main") == Badge("failing", "0.1.0")


def test_a_run_in_progress_does_not_hide_the_last_result():
    runs = newest_first(run(1, "failed"), run(2, "running"), run(3, "queued"))
    assert badge_for(runs, "main").status == "failing"


def test_running_when_nothing_has_finished_yet():
    assert badge_for([run(1, "running")], "main").status == "running"
    assert badge_for([run(1, "queued")], "main").status == "running"


def test_superseded_and_interrupted_runs_say_nothing_about_the_code():
    runs = newest_first(run(1, "succeeded", version="0.2.0"), run(2, "interrupted"), run(3, "superseded"))
    assert badge_for(runs, "main") == Badge("passing", "0.2.0")
    assert badge_for([run(1, "interrupted")], "main").status == "unknown"


def test_other_branches_do_not_decide_the_status_but_tags_release_versions():
    runs = newest_first(
        run(1, "succeeded", version="0.1.0"),
        run(2, "failed", ref="refs/heads/feature"),
        run(3, "succeeded", ref="refs/tags/v1.0.0", version="1.0.0"),
    )
    assert badge_for(runs, "main") == Badge("passing", "1.0.0")
    assert badge_for(runs, "feature") == Badge("failing", "1.0.0")


@pytest.mark.parametrize(
    ("badge", "texts", "colour"),
    [
        (Badge("passing", "0.1.1"), ["ci", "passing", "0.1.1"], "#4c1"),
        (Badge("failing", None), ["ci", "failing"], "#e05d44"),
        (Badge("running", None), ["ci", "running"], "#dfb317"),
        (Badge("unknown", None), ["ci", "unknown"], "#9f9f9f"),
    ],
)
def test_badge_is_svg_with_its_texts_and_colour(badge, texts, colour):
    root = ET.fromstring(render_badge(badge))  # noqa: S314 - our own output, not untrusted XML
    assert root.tag == f"{SVG}svg"
    drawn = [text.text for text in root.iter(f"{SVG}text")]
    assert drawn[1::2] == texts  # each text is drawn twice: shadow, then the text
    fills = [rect.get("fill") for rect in root.iter(f"{SVG}rect")]
    assert colour in fills
    title = root.find(f"{SVG}title")
    assert title is not None and title.text == " | ".join(texts)
    segments = [int(rect.get("width") or 0) for rect in root.iter(f"{SVG}rect") if rect.get("x") is not None]
    assert sum(segments) == int(root.get("width") or 0)
    assert all(width > 7 * len(text) for width, text in zip(segments, texts, strict=True))


def test_badge_text_is_escaped():
    svg = render_badge(Badge("passing", "1.0.0-<x>&"))
    root = ET.fromstring(svg)  # noqa: S314 - our own output, not untrusted XML
    assert "1.0.0-<x>&" in [text.text for text in root.iter(f"{SVG}text")]
    assert "<x>" not in svg
