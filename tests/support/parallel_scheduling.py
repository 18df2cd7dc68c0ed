"""xdist's ``load`` scheduling, then the ``exclusive`` tests alone on the last worker (tests/support/parallel.py).

An xdist worker runs a test only once it knows the next one (or is told to shut down), so "alone" is
reached like this: when no shared test is left to hand out, every worker but one is told to shut down (it
finishes its queue first); the one kept is the one with the shortest queue. Once the others have finished,
the kept worker gets every exclusive test and is told to shut down after them. A worker that crashes gives
its unfinished tests back to the phase they belong to, and a replacement worker xdist starts takes part.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import cycle
from typing import Any

import pytest
from xdist.scheduler.load import LoadScheduling

from tests.support.parallel import split


class ExclusiveLastScheduling(LoadScheduling):  # type: ignore[misc]  # xdist ships no type hints
    def __init__(self, config: pytest.Config, log: Any, read_exclusive: Callable[[], set[str]]) -> None:
        super().__init__(config, log)
        self.collection: list[str] | None = None  # (declared for mypy: LoadScheduling has no hints)
        self.read_exclusive = read_exclusive
        self.alone: list[int] = []  # exclusive tests not yet handed out
        self.alone_all: set[int] = set()
        self.kept: Any = None  # the worker that runs the exclusive phase

    @property
    def tests_finished(self) -> bool:
        return not self.alone and super().tests_finished

    @property
    def has_pending(self) -> bool:
        return bool(self.alone) or super().has_pending

    def schedule(self) -> None:
        assert self.collection_is_completed
        if self.collection is not None:
            for node in self.nodes:
                self.check_schedule(node)
            return
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return
        collection: list[str] = next(iter(self.node2collection.values()))
        self.collection = collection
        shared, alone = split(collection, self.read_exclusive())
        self.pending[:] = shared
        self.alone, self.alone_all = alone, set(alone)
        maxschedchunk: int = self.config.getoption("maxschedchunk") or len(collection)
        self.maxschedchunk = maxschedchunk
        if len(self.pending) < 2 * len(self.nodes):
            nodes = cycle(self.nodes)
            for _ in range(len(self.pending)):
                self._send_tests(next(nodes), 1)
        else:
            # consecutive chunks, as LoadScheduling does: a module's tests mostly stay on one worker
            chunk = max(min(len(self.pending) // len(self.nodes) // 4, maxschedchunk), 2)
            for node in self.nodes:
                self._send_tests(node, chunk)
        if not self.pending:
            self._drain()

    def check_schedule(self, node: Any, duration: float = 0) -> None:
        if node.shutting_down:
            return
        if self.pending:
            super().check_schedule(node, duration)  # never shuts a node down while tests are pending
        elif self.collection is not None:
            self._drain()

    def mark_test_pending(self, item: str) -> None:
        assert self.collection is not None
        index = self.collection.index(item)
        if index in self.alone_all:
            self.alone.insert(0, index)
        else:
            self.pending.insert(0, index)
        for node in self.nodes:
            self.check_schedule(node)

    def remove_node(self, node: Any) -> str | None:
        pending = self.node2pending.pop(node)
        if node is self.kept:
            self.kept = None
        crashitem = None
        if pending:
            assert self.collection is not None
            crashitem = self.collection[pending.pop(0)]
            self.pending.extend(index for index in pending if index not in self.alone_all)
            self.alone[:0] = [index for index in pending if index in self.alone_all]
        for other in self.nodes:  # a worker gone may be what the exclusive phase waits for
            self.check_schedule(other)
        return crashitem

    def _drain(self) -> None:
        """No shared test is left to hand out: keep one worker for the exclusive phase, shut the others."""
        live = [node for node in self.nodes if not node.shutting_down]
        if not self.alone:
            for node in live:
                node.shutdown()
            return
        if not live:
            return  # every worker is on its way down; xdist replaces a crashed one, which comes back here
        if self.kept not in live:
            self.kept = min(live, key=lambda node: len(self.node2pending[node]))
        for node in live:
            if node is not self.kept:
                node.shutdown()
        if len(self.node2pending) == 1:  # the others have finished: the kept worker is alone
            indices, self.alone = self.alone, []
            self.node2pending[self.kept].extend(indices)
            self.kept.send_runtest_some(indices)
            self.kept.shutdown()
