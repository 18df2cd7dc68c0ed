"""The peer benchmark's table (bench/peers/table.py) and its step parsers: pure logic, nothing timed."""

from __future__ import annotations

from bench.peers.ci import agent_steps, shell_steps
from bench.peers.table import Row, cell, load_cell, ratio, render


def test_ratio_is_pi_cicds_median_over_the_peers() -> None:
    assert ratio([8.0, 9.0, 100.0], [4.0, 4.5, 5.0]) == "2.00"


def test_ratio_is_a_dash_when_the_peer_measured_zero_or_nothing() -> None:
    assert ratio([0.77], [0.0]) == "–"
    assert ratio([1.0], []) == "–"
    assert ratio([], [1.0]) == "–"


def test_a_cell_shows_the_median_and_the_range_of_several_samples() -> None:
    assert cell([0.70, 0.81, 0.75], "s", "ouroboros") == "ouroboros 0.75 s (0.70–0.81)"
    assert cell([51.44], "MiB") == "51.4 MiB"
    assert cell([], "ms", "webhook") == "webhook n/a"


def test_the_load_is_a_range_unless_it_stayed_put() -> None:
    assert load_cell([4.23, 6.31, 5.0]) == "4.2–6.3"
    assert load_cell([4.21, 4.24]) == "4.2"
    assert load_cell([]) == "?"


def test_the_table_has_one_line_per_row_under_its_header() -> None:
    rows = [Row("idle RSS", "MiB", "ouroboros", [50.0], [45.0], [3.0, 4.0])]
    lines = render(rows).splitlines()
    assert lines[0].startswith("| metric")
    assert lines[2] == "| idle RSS | 50.0 MiB | ouroboros 45.0 MiB | 1.11 | 3.0–4.0 |"


def test_pi_cicd_step_times_come_from_the_run_logs_stamps() -> None:
    log = (
        "2026-11-28 20:51:00.100 | INFO     | step checkout started\n"
        "2026-11-28 20:51:00.350 | INFO     | step checkout finished in 0.2s\n"
        "2026-11-28 20:51:00.360 | INFO     | step test started\n"
        "2026-11-28 20:51:01.000 | ERROR    | step test failed after 0.6s: exit 1\n"
    )
    assert agent_steps(log) == {"checkout": 0.25}


def test_shell_step_times_are_the_gaps_between_its_marks() -> None:
    steps = shell_steps("start 100.0\ncheckout 100.5\ntest 102.0\n")
    assert steps == {"checkout": 0.5, "test": 1.5}
