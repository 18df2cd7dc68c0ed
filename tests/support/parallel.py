"""Tests that must run alone: ``@pytest.mark.exclusive("why")``, run after every other test, one at a time.

``scripts/test -n 2`` runs the suite on pytest-xdist workers: most tests share this machine and its
dockerd with one other test at a time. A test marked ``exclusive`` cannot: it changes the engine for
everyone (``docker swarm init``/``leave``), counts what the whole engine holds (images, containers),
measures the machine (memory, storage writes, idle wake-ups) or must see every other test's output (the
secrets scan). The session then has two phases:

1. every test not marked ``exclusive``, spread over the workers (xdist's ``load`` scheduling);
2. once those have all finished and every worker but one has shut down, the ``exclusive`` tests on that
   last worker, one after the other, in collection order (the secrets scan last).

Both phases are one pytest session: one summary, one ``--durations`` list, one exit status, and the
reliability table (tests/support/reliability.py) gathers its rows from every worker.

Without xdist (``-n 0``, ``-p no:xdist``) the ``exclusive`` tests simply run last.

How the controller learns which tests are marked: it does not collect, so every worker writes the node IDs
of its ``exclusive`` items to a run directory the controller hands it (``workerinput``) before it reports
its collection; the scheduler reads them when it starts handing out tests.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

MARKER = "exclusive"
RUN_DIR_KEY = "picicd_run_dir"
_RUN_DIR = pytest.StashKey[Path]()


# Fixtures whose every user runs alone, whatever its module: marked here so no test can forget.
EXCLUSIVE_FIXTURES = {
    "swarm_mode": "inits a swarm on the shared engine and leaves it at the end of the worker's session",
}


def is_exclusive(item: pytest.Item) -> bool:
    return item.get_closest_marker(MARKER) is not None


def run_dir(config: pytest.Config) -> Path | None:
    """The directory every worker of this run and the controller share (None without xdist)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and RUN_DIR_KEY in workerinput:
        return Path(workerinput[RUN_DIR_KEY])
    return config.stash.get(_RUN_DIR, None)


def worker_id(config: pytest.Config) -> str:
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput is not None else "main"


@pytest.hookimpl(trylast=True)  # after xdist's, which registers "dsession" on the controller
def pytest_configure(config: pytest.Config) -> None:
    if getattr(config, "workerinput", None) is None and config.pluginmanager.hasplugin("dsession"):
        config.stash[_RUN_DIR] = Path(tempfile.mkdtemp(prefix="picicd-pytest-run-"))


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = config.stash.get(_RUN_DIR, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    directory = node.config.stash.get(_RUN_DIR, None)
    if directory is not None:
        node.workerinput[RUN_DIR_KEY] = str(directory)


def pytest_itemcollected(item: pytest.Item) -> None:
    # as each test is collected, so -m exclusive / -m "not exclusive" see the marker too
    for fixture, why in EXCLUSIVE_FIXTURES.items():
        if fixture in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.exclusive(why))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    alone = [item for item in items if is_exclusive(item)]
    items[:] = [item for item in items if not is_exclusive(item)] + alone
    directory = run_dir(config)
    if directory is not None and getattr(config, "workerinput", None) is not None:
        # Written before this worker reports its collection, so before the scheduler can read it.
        target = directory / f"exclusive-{worker_id(config)}.txt"
        partial = target.with_suffix(".part")
        partial.write_text("".join(f"{item.nodeid}\n" for item in alone))
        partial.replace(target)


@contextmanager
def run_lock(config: pytest.Config, name: str) -> Iterator[None]:
    """Held by one worker of this run at a time (a no-op without xdist): a session fixture that builds
    something every worker uses (an image under a fixed tag) builds it under this lock, so the second
    worker's build finds the first one's layers in the engine's cache instead of building in parallel."""
    directory = run_dir(config)
    if directory is None:
        yield
        return
    with (directory / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def exclusive_ids(directory: Path) -> set[str]:
    ids: set[str] = set()
    for path in directory.glob("exclusive-*.txt"):
        ids.update(line for line in path.read_text().splitlines() if line)
    return ids


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    directory = config.stash.get(_RUN_DIR, None)
    if directory is None or config.getvalue("dist") != "load":
        return None  # another --dist asked for by hand: xdist's own scheduler, no exclusive phase
    from tests.support.parallel_scheduling import ExclusiveLastScheduling

    return ExclusiveLastScheduling(config, log, lambda: exclusive_ids(directory))


def split(collection: Sequence[str], exclusive: set[str]) -> tuple[list[int], list[int]]:
    """Indices of the tests that share the workers, and of those that run alone, in collection order."""
    shared = [index for index, nodeid in enumerate(collection) if nodeid not in exclusive]
    alone = [index for index, nodeid in enumerate(collection) if nodeid in exclusive]
    return shared, alone
