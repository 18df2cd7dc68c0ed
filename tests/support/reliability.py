"""The reliability results plugin: every test under tests/reliability/ is one row of docs/RELIABILITY.md.

A test declares its row with ``@pytest.mark.reliability("scenario", "what must happen")`` and reports what
it saw through the ``observed`` fixture; the result (pass/fail) comes from pytest itself. The table is
rewritten only after a session in which the whole reliability directory ran, so a partial run (``-k``,
a single file, ``-x`` stopping early) never publishes a partial table.

Secrets: tests register every configured secret with the ``secret`` fixture and hand every email or
HTTP answer they receive to ``produced``. tests/reliability/test_secrets.py is moved to the end of the
session and scans what the session produced so far (log files and agent output under pytest's basetemp,
plus the registered texts) with :func:`find_secrets`.

On xdist workers (``scripts/test -n 2``) each worker collects every row but runs only some: it
hands its rows to the controller in ``workeroutput``, and the controller writes the table. The secrets scan
runs in the exclusive phase (tests/support/parallel.py), after every other worker has finished: each
worker leaves what it registered in the run directory the workers share, and the scan reads it there and
scans every worker's basetemp.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.parallel import run_dir, worker_id

ROOT = Path(__file__).resolve().parents[2]
RELIABILITY_DIR = ROOT / "tests" / "reliability"
TABLE_PATH = ROOT / "docs" / "RELIABILITY.md"
# The secrets scan must come after every test that may leak, so it runs last in the session.
LAST_MODULE = "test_secrets.py"
# Files the agents and tests write as output (logs, captured process output); inputs such as .env files
# legitimately hold secrets and are not scanned.
OUTPUT_SUFFIXES = (".log", ".out", ".txt", ".eml", ".json", ".html")


@dataclass
class Row:
    module: str
    title: str
    scenario: str
    requirement: str
    observations: list[str] = field(default_factory=list)
    result: str | None = None
    failure: str | None = None


@dataclass
class Registry:
    """Session-wide state of the plugin."""

    rows: dict[str, Row] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)
    texts: list[tuple[str, str]] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)


_REGISTRY_KEY = pytest.StashKey[Registry]()


def _registry(config: pytest.Config) -> Registry:
    return config.stash.setdefault(_REGISTRY_KEY, Registry())


def _in_reliability_dir(path: Path) -> bool:
    return RELIABILITY_DIR == path.parent or RELIABILITY_DIR in path.parents


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "reliability(scenario, requirement): one row of docs/RELIABILITY.md (scenario, what must happen)",
    )
    _registry(config)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    last = [item for item in items if item.path.name == LAST_MODULE and _in_reliability_dir(item.path)]
    if last:
        items[:] = [item for item in items if item not in last] + last
    registry = _registry(config)
    for item in items:
        if not _in_reliability_dir(item.path):
            continue
        marker = item.get_closest_marker("reliability")
        module = getattr(item, "module", None)
        doc = (getattr(module, "__doc__", None) or item.path.stem).strip().splitlines()[0].rstrip(".")
        if marker is None or len(marker.args) != 2:
            scenario, requirement = item.name, "(test has no reliability marker)"
        else:
            scenario, requirement = str(marker.args[0]), str(marker.args[1])
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            scenario = f"{scenario} [{callspec.id}]"
        registry.rows[item.nodeid] = Row(item.path.name, doc, scenario, requirement)


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        if _in_reliability_dir(item.path):
            _registry(item.config).incomplete.append(f"deselected: {item.nodeid}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    row = _registry(item.config).rows.get(item.nodeid)
    if row is None:
        return report
    if hasattr(report, "wasxfail") and report.skipped:
        row.result = "fail (known)"
        row.failure = f"known failure: {report.wasxfail}"
    elif hasattr(report, "wasxfail") and report.passed and report.when == "call":
        row.result = "pass"  # a non-strict xfail that held this time
    elif report.failed:
        row.result = "fail"
        row.failure = _failure_text(report)
    elif report.skipped:
        row.result = row.result or "skipped"
        row.failure = row.failure or _failure_text(report)
    elif report.when == "call" and row.result is None:
        row.result = "pass"
    return report


def _failure_text(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if message is None:
        message = str(report.longrepr)
    lines = [line for line in str(message).splitlines() if line.strip()]
    return lines[0][:300] if lines else "failed"


@pytest.fixture
def observed(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``observed("what happened, with numbers")``: the "what happened" cell of this test's row."""
    row = _registry(request.config).rows.get(request.node.nodeid)

    def record(text: str) -> None:
        if row is not None:
            row.observations.append(text)

    return record


@pytest.fixture
def secret(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``secret(value)`` registers a configured secret for the end-of-session scan and returns it."""
    registry = _registry(request.config)

    def register(value: str) -> str:
        registry.secrets.add(value)
        return value

    return register


@pytest.fixture
def produced(request: pytest.FixtureRequest) -> Callable[[str, str | bytes], None]:
    """``produced(source, text)`` hands an email or HTTP answer the suite received to the secrets scan."""
    registry = _registry(request.config)
    nodeid = request.node.nodeid

    def collect(source: str, text: str | bytes) -> None:
        decoded = text.decode(errors="replace") if isinstance(text, bytes) else text
        registry.texts.append((f"{nodeid}: {source}", decoded))

    return collect


def register_secret(config: pytest.Config, value: str) -> str:
    """The ``secret`` fixture for fixtures of a wider scope."""
    _registry(config).secrets.add(value)
    return value


def register_produced(config: pytest.Config, source: str, text: str) -> None:
    """The ``produced`` fixture for fixtures of a wider scope."""
    _registry(config).texts.append((source, text))


def registered_secrets(config: pytest.Config) -> set[str]:
    return set(_registry(config).secrets)


def produced_texts(config: pytest.Config) -> list[tuple[str, str]]:
    return list(_registry(config).texts)


def output_files(root: Path) -> Iterator[Path]:
    """Every output file under ``root`` (logs, captured agent output), not the inputs tests wrote."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if path.suffix in OUTPUT_SUFFIXES or ".log" in path.suffixes:
                yield path


def find_secrets(secrets: Iterable[str], files: Iterable[Path], texts: Iterable[tuple[str, str]]) -> list[str]:
    """Where any secret appears: ``"<file or source>: secret #n"`` (the secret itself is never repeated)."""
    values = sorted(value for value in set(secrets) if value)
    hits: list[str] = []
    for path in files:
        try:
            content = path.read_bytes()
        except OSError:
            continue
        for index, value in enumerate(values):
            if value.encode() in content:
                hits.append(f"{path}: secret #{index + 1}")
    for source, text in texts:
        for index, value in enumerate(values):
            if value in text:
                hits.append(f"{source}: secret #{index + 1}")
    return hits


def _complete(session: pytest.Session, registry: Registry) -> bool:
    if registry.incomplete or session.shouldstop or session.shouldfail:
        return False
    expected = {path.name for path in RELIABILITY_DIR.glob("test_*.py")}
    collected = {row.module for row in registry.rows.values()}
    if not expected or expected != collected:
        return False
    if any("::" in str(arg) for arg in session.config.args):
        return False  # a node id selects part of a file
    return all(row.result is not None for row in registry.rows.values())


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_table(rows: Iterable[Row], today: dt.date) -> str:
    rows = list(rows)
    passed = sum(row.result == "pass" for row in rows)
    lines = [
        "# Reliability",
        "",
        f"Generated by `scripts/test tests/reliability` on {today.isoformat()}; do not edit by hand.",
        "Each row is one test under `tests/reliability/`: the scenario it creates with real components",
        "(dockerd, docker-registry, git, SMTP, the agents as real processes), what must happen, and what the",
        "test saw.",
        "",
        f"**{passed} of {len(rows)} scenarios pass.**",
    ]
    by_module: dict[str, list[Row]] = {}
    for row in rows:
        by_module.setdefault(row.module, []).append(row)
    for module, module_rows in by_module.items():
        lines += [
            "",
            f"## {module_rows[0].title}",
            "",
            f"`tests/reliability/{module}`",
            "",
            "| scenario | what must happen | what happened | result |",
            "|---|---|---|---|",
        ]
        for row in module_rows:
            happened = "; ".join(row.observations)
            if row.failure:
                happened = f"{happened}; {row.failure}" if happened else row.failure
            happened = happened or "as required"
            cells = (row.scenario, row.requirement, happened, row.result or "not run")
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


WORKEROUTPUT_KEY = "picicd_reliability"


def _registered_path(directory: Path, worker: str) -> Path:
    # in the run directory, outside every basetemp: a list of secrets is not output the scan should flag
    return directory / f"registered-{worker}.json"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    registry = _registry(config)
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller writes the table
        workeroutput[WORKEROUTPUT_KEY] = {
            "rows": {nodeid: dataclasses.asdict(row) for nodeid, row in registry.rows.items()},
            "incomplete": list(registry.incomplete),
        }
        directory = run_dir(config)
        if directory is not None:
            _registered_path(directory, worker_id(config)).write_text(
                json.dumps({"secrets": sorted(registry.secrets), "texts": registry.texts})
            )
        return
    if not registry.rows or not _complete(session, registry):
        return
    TABLE_PATH.parent.mkdir(parents=True, exist_ok=True)
    TABLE_PATH.write_text(render_table(registry.rows.values(), dt.datetime.now(dt.UTC).date()))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """On the xdist controller: a worker's rows; a row some worker ran wins over the copies of the others."""
    output = getattr(node, "workeroutput", None) or {}
    shipped = output.get(WORKEROUTPUT_KEY)
    if shipped is None:
        return
    registry = _registry(node.config)
    registry.incomplete.extend(shipped["incomplete"])
    for nodeid, fields in shipped["rows"].items():
        known = registry.rows.get(nodeid)
        if known is None or (known.result is None and fields["result"] is not None):
            registry.rows[nodeid] = Row(**fields)


def other_workers_registered(config: pytest.Config) -> tuple[set[str], list[tuple[str, str]]]:
    """What the workers that finished before this one registered (nothing without xdist)."""
    directory = run_dir(config)
    secrets: set[str] = set()
    texts: list[tuple[str, str]] = []
    if directory is None:
        return secrets, texts
    for path in sorted(directory.glob("registered-*.json")):
        if path != _registered_path(directory, worker_id(config)):
            data = json.loads(path.read_text())
            secrets.update(data["secrets"])
            texts.extend((source, text) for source, text in data["texts"])
    return secrets, texts


def session_output_root(config: pytest.Config, basetemp: Path) -> Path:
    """Where every test of this session wrote: basetemp, or with xdist the directory of all workers' basetemps."""
    return basetemp.parent if getattr(config, "workerinput", None) is not None else basetemp
