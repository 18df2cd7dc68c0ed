"""The peer benchmark's result table: medians, ratios and the machine's load, as markdown."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field


def load_now() -> float:
    """The 1-minute load average (the machine is shared, so every number is printed beside it)."""
    return os.getloadavg()[0]


@dataclass
class Row:
    """One comparison: samples of pi-cicd and of the peer for the same metric, same run, same machine."""

    metric: str
    unit: str
    """``MiB``, ``%``, ``ms`` or ``s``: how the values are printed."""
    peer: str
    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    """1-minute load averages taken during the row (at the start and end of each round)."""

    def mark_load(self) -> None:
        self.loads.append(load_now())


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(ours: list[float], theirs: list[float]) -> str:
    """pi-cicd's median over the peer's, ``–`` when either is missing or the peer's is zero."""
    mine, peer = median(ours), median(theirs)
    if mine is None or peer is None or peer <= 0:
        return "–"
    return f"{mine / peer:.2f}"


def _number(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.2f}"
    if unit == "ms":
        return f"{value:.1f}"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:.1f}"


def cell(values: list[float], unit: str, name: str = "") -> str:
    """``name median unit`` and, for several samples, their range: ``ouroboros 0.75 s (0.70–0.81)``."""
    middle = median(values)
    if middle is None:
        return f"{name} n/a".strip()
    text = f"{name} {_number(middle, unit)} {unit}".strip()
    if len(values) > 1 and _number(min(values), unit) != _number(max(values), unit):
        text += f" ({_number(min(values), unit)}–{_number(max(values), unit)})"
    return text


def load_cell(loads: list[float]) -> str:
    if not loads:
        return "?"
    low, high = min(loads), max(loads)
    return f"{low:.1f}" if round(low, 1) == round(high, 1) else f"{low:.1f}–{high:.1f}"


def render(rows: list[Row]) -> str:
    """The markdown table: metric | pi-cicd | peer | ratio | load (medians; ranges in brackets)."""
    lines = [
        "| metric (medians; range in brackets) | pi-cicd | peer | ratio | load (1 min) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.metric} | {cell(row.ours, row.unit)} | {cell(row.theirs, row.unit, row.peer)} "
            f"| {ratio(row.ours, row.theirs)} | {load_cell(row.loads)} |"
        )
    return "\n".join(lines)
