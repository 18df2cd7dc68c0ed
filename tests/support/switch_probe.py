"""Two HTTP clients hammering one URL while something changes behind it (a proxy switch, a deploy).

- ``fresh``: a new TCP connection per request (``http.client``, cheap enough for a 20 ms interval),
  which sees refused connections and resets;
- ``keepalive``: one ``httpx.Client`` reusing its connection, as browsers and API clients do, which
  sees a server closing a connection it was about to use.

A request fails when it raises (refused, reset, closed without an answer, or no answer within
``timeout``), answers anything but 200, or answers a body outside ``expected``; one still unanswered
when the probe stops fails too. A slow answer is not a dropped request: ``timeout`` (15 s) is far
above what a loaded machine makes a request wait (a 2 s timeout once failed a passing switch under
load ~13 with six ReadTimeouts), and a dropped request ends in a reset, a 502 or silence, which
still fail. ``slow`` lists the answers that took over ``slow_after`` seconds.
``max_gap`` is the longest time between two good answers of one client (the probe's view of an
outage); no test asserts on it, the benches print it.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from tests.support.polling import wait_for


@dataclass(frozen=True)
class Sample:
    client: str
    at: float
    ok: bool
    detail: str
    """The body when it answered, else the error."""
    took: float = 0.0
    """Seconds from sending the request to its answer or error."""


@dataclass
class SwitchProbe:
    url: str
    expected: Collection[str]
    interval: float = 0.02
    timeout: float = 15.0
    slow_after: float = 2.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._keepalive = httpx.Client(timeout=self.timeout)
        self._sent: dict[str, float | None] = {"fresh": None, "keepalive": None}
        """When each client's request in flight was sent."""
        self._threads = [
            threading.Thread(target=self._loop, args=("fresh", self._fresh_get()), daemon=True),
            threading.Thread(target=self._loop, args=("keepalive", self._keepalive_get()), daemon=True),
        ]

    def __enter__(self) -> SwitchProbe:
        for thread in self._threads:
            thread.start()
        wait_for(
            lambda: all(self.good_count(client) > 0 for client in ("fresh", "keepalive")),
            timeout=self.timeout + 10,
            what=f"a first good answer from {self.url} on both clients",
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)  # a request in flight gets its whole timeout
        with self._lock:
            for client, sent in self._sent.items():
                if sent is not None:  # the thread is stuck past its timeout: that request got no answer
                    self.samples.append(Sample(client, sent, False, "no answer when the probe stopped",
                                               time.monotonic() - sent))
        self._keepalive.close()

    def wait_for_body(self, body: str, *, timeout: float | None = None) -> None:
        """Wait until both clients' latest answers are ``body`` (the switch reached every client)."""

        def seen() -> bool:
            return all(self.latest(client) == body for client in ("fresh", "keepalive"))

        wait_for(seen, timeout=timeout or self.timeout + 10, what=f"both clients to answer {body!r}")

    def wait_for_more(self, count: int, *, timeout: float | None = None) -> None:
        """Wait for ``count`` more samples from each client (traffic after a change, not just before)."""
        start = {client: len(self.of(client)) for client in ("fresh", "keepalive")}
        wait_for(
            lambda: all(len(self.of(c)) >= start[c] + count for c in start),
            timeout=timeout or self.timeout + 10,
            what=f"{count} more samples per client",
        )

    # results

    def of(self, client: str) -> list[Sample]:
        with self._lock:
            return [sample for sample in self.samples if sample.client == client]

    def good_count(self, client: str) -> int:
        return sum(1 for sample in self.of(client) if sample.ok)

    def latest(self, client: str) -> str | None:
        samples = self.of(client)
        return samples[-1].detail if samples and samples[-1].ok else None

    @property
    def failures(self) -> list[Sample]:
        with self._lock:
            return [sample for sample in self.samples if not sample.ok]

    @property
    def slow(self) -> list[Sample]:
        """Good answers that took over ``slow_after`` seconds (a loaded machine, or a proxy retrying a dial)."""
        with self._lock:
            return [sample for sample in self.samples if sample.ok and sample.took > self.slow_after]

    def max_gap(self, client: str) -> float:
        good = [sample.at for sample in self.of(client) if sample.ok]
        return max((later - earlier for earlier, later in zip(good, good[1:], strict=False)), default=0.0)

    def explain(self, marks: Sequence[tuple[str, float]] = ()) -> str:
        """The failures and ``marks`` (name, ``time.monotonic()``) on one timeline, for an assertion message."""
        with self._lock:
            origin = self.samples[0].at if self.samples else 0.0
            events = [(at, f"mark {name}") for name, at in marks]
            events += [
                (sample.at, f"{sample.client} failed after {sample.took:.2f}s: {sample.detail}")
                for sample in self.samples
                if not sample.ok
            ]
            events += [
                (sample.at, f"{sample.client} answered after {sample.took:.2f}s (slow)")
                for sample in self.samples
                if sample.ok and sample.took > self.slow_after
            ]
            slowest = sorted(self.samples, key=lambda sample: sample.took)[-3:]
        lines = [f"{at - origin:+8.3f}s {what}" for at, what in sorted(events)]
        slow = (f"{sample.client} {sample.took:.2f}s at {sample.at - origin:+.3f}s" for sample in slowest)
        lines.append("slowest requests: " + ", ".join(slow))
        return "\n".join(lines)

    def bodies(self, client: str) -> list[str]:
        """The distinct good bodies ``client`` saw, in order (``["A", "B"]`` for one switch)."""
        seen: list[str] = []
        for sample in self.of(client):
            if sample.ok and (not seen or seen[-1] != sample.detail):
                seen.append(sample.detail)
        return seen

    # the clients

    def _loop(self, client: str, get: Callable[[], tuple[int, str]]) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            with self._lock:
                self._sent[client] = at
            try:
                status, body = get()
                ok = status == 200 and body in self.expected
                detail = body if ok else f"HTTP {status}: {body[:80]!r}"
            except (OSError, http.client.HTTPException, httpx.HTTPError) as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._sent[client] = None
                self.samples.append(Sample(client, at, ok, detail, time.monotonic() - at))
            self._stop.wait(self.interval)

    def _fresh_get(self) -> Callable[[], tuple[int, str]]:
        parts = urlsplit(self.url)
        host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"

        def get() -> tuple[int, str]:
            connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
            try:
                connection.request("GET", path, headers={"Connection": "close"})
                response = connection.getresponse()
                return response.status, response.read().decode("utf-8", errors="replace")
            finally:
                connection.close()

        return get

    def _keepalive_get(self) -> Callable[[], tuple[int, str]]:
        client = self._keepalive

        def get() -> tuple[int, str]:
            response = client.get(self.url)
            return response.status_code, response.text

        return get
