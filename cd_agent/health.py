"""Is the freshly started container healthy? One verdict within ``CD_HEALTH_TIMEOUT``.

In order of preference, as DESIGN.md says:

1. the image's own ``HEALTHCHECK`` (Docker's ``State.Health.Status`` becomes ``healthy``);
2. else ``CD_HEALTH_URL`` answering 2xx (requested from the agent's host, e.g. a published port; redirects
   followed only to the same scheme, host and port; proxy variables ignored: see ``probe_url``);
3. else the container still running, not restarting and not restarted after ``CD_HEALTH_GRACE``.

Whatever the method, a container that exits or restarts fails at once instead of at the deadline.

The first look is immediate and the next ones follow quickly (every 50 ms, backing off to 250 ms): a
fast app's verdict, and a crashing release's, should not wait on the poll. A URL probe's timeout grows
with the time waited (0.25 s at first, 2 s at most), so that one request held up while the container's
network comes up cannot hide its exit for long; an app slow to answer still passes, a little later.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import httpx

from cd_agent.engine import ContainerInfo

Method = Literal["healthcheck", "url", "running"]
FIRST_POLL = 0.05
MAX_POLL = 0.25
FIRST_PROBE_TIMEOUT = 0.25
MAX_PROBE_TIMEOUT = 2.0
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class HealthVerdict:
    healthy: bool
    method: Method
    reason: str
    output: str = ""
    """What the check saw last: HEALTHCHECK output, the URL's answer or error."""


def probe_url(url: str, timeout: float) -> tuple[bool, str]:
    """GET ``url``: (answered 2xx, what happened).

    A redirect is followed only to the same origin (scheme, host and port: the app itself, e.g. ``/health``
    to ``/health/``), at most ``MAX_REDIRECTS`` times; one to anywhere else is a failed probe naming its
    status and ``Location``: a release must not be judged by what another listener (one the host alone can
    reach) answers. The proxy environment variables are ignored (``trust_env=False``): the probe goes
    straight to the app, never through a proxy configured for the agent's other traffic.
    """
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            response = client.get(url)
            for _ in range(MAX_REDIRECTS):
                target = response.next_request.url if response.next_request is not None else None
                if target is None or not response.is_redirect:
                    break
                if _origin(target) != _origin(response.url):
                    location = response.headers.get("location", "")
                    return False, (
                        f"GET {response.url}: HTTP {response.status_code} redirect to {location!r}, not followed: "
                        f"a health probe follows redirects only within {_origin_text(response.url)}"
                    )
                response = client.get(target)
    except httpx.HTTPError as exc:
        return False, f"GET {url}: {type(exc).__name__}: {exc}"
    if response.is_redirect:
        return False, f"GET {response.url}: HTTP {response.status_code}: more than {MAX_REDIRECTS} redirects"
    return response.is_success, f"GET {url}: HTTP {response.status_code}"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


def _origin_text(url: httpx.URL) -> str:
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}"


class Inspects(Protocol):
    """The one engine operation a health check needs."""

    def container(self, name_or_id: str) -> ContainerInfo | None: ...


class HealthChecker:
    """Waits for the verdict on one container; ``clock``/``sleep``/``probe`` are injectable for tests."""

    def __init__(
        self,
        docker: Inspects,
        *,
        url: str | None,
        timeout: float,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        probe: Callable[[str, float], tuple[bool, str]] = probe_url,
    ) -> None:
        self._docker = docker
        self._url = url
        self._timeout = timeout
        self._grace = grace
        self._clock = clock
        self._sleep = sleep
        self._probe = probe

    def wait(self, container: str) -> HealthVerdict:
        deadline = self._clock() + self._timeout
        info = self._docker.container(container)
        if info is None:
            return HealthVerdict(False, "running", f"container {container} disappeared")
        if info.health_status is not None:
            return self._wait_healthcheck(container, deadline)
        if self._url is not None:
            return self._wait_url(container, self._url, deadline)
        return self._wait_running(container, deadline)

    def _wait_healthcheck(self, container: str, deadline: float) -> HealthVerdict:
        pauses = _pauses()
        while True:
            info = self._docker.container(container)
            failed = _not_running(info, container)
            if info is None or failed:
                return HealthVerdict(False, "healthcheck", failed, _last(info))
            if info.health_status == "healthy":
                return HealthVerdict(True, "healthcheck", "the image's HEALTHCHECK says healthy", _last(info))
            if info.health_status == "unhealthy":
                return HealthVerdict(False, "healthcheck", "the image's HEALTHCHECK says unhealthy", _last(info))
            if self._clock() >= deadline:
                return HealthVerdict(
                    False, "healthcheck",
                    f"not healthy within {self._timeout:g}s (health status {info.health_status})", _last(info),
                )
            self._sleep(next(pauses))

    def _wait_url(self, container: str, url: str, deadline: float) -> HealthVerdict:
        seen, began, pauses = "", self._clock(), _pauses()
        while True:
            info = self._docker.container(container)
            failed = _not_running(info, container)
            if failed:
                return HealthVerdict(False, "url", failed, seen)
            now = self._clock()
            allowed = min(MAX_PROBE_TIMEOUT, max(FIRST_PROBE_TIMEOUT, now - began))
            ok, seen = self._probe(url, max(0.2, min(allowed, deadline - now)))
            if ok:
                return HealthVerdict(True, "url", f"{url} answered 2xx", seen)
            if self._clock() >= deadline:
                return HealthVerdict(False, "url", f"{url} did not answer 2xx within {self._timeout:g}s", seen)
            self._sleep(next(pauses))

    def _wait_running(self, container: str, deadline: float) -> HealthVerdict:
        until = min(deadline, self._clock() + self._grace)
        pauses = _pauses()
        while True:
            info = self._docker.container(container)
            failed = _not_running(info, container)
            if failed:
                return HealthVerdict(False, "running", failed)
            if self._clock() >= until:
                return HealthVerdict(True, "running", f"still running after {self._grace:g}s")
            self._sleep(min(next(pauses), max(0.0, until - self._clock())))


def _pauses() -> Iterator[float]:
    pause = FIRST_POLL
    while True:
        yield pause
        pause = min(MAX_POLL, pause * 1.5)


def _not_running(info: ContainerInfo | None, container: str) -> str:
    """Why the container is not (steadily) running, or "" when it is."""
    if info is None:
        return f"container {container} disappeared"
    if info.restarting:
        # Between two runs the engine still shows the code of the exit that triggered the restart.
        return (
            f"the container exited with code {info.exit_code} and is being restarted by its restart policy"
            f" ({_times(info.restart_count)} so far)"
        )
    if info.restart_count > 0:
        # Running again: State.ExitCode is the new run's (0), the code of the exit is no longer known.
        return (
            f"the container exited and its restart policy restarted it {_times(info.restart_count)}"
            " (the exit code is not kept across a restart; see the log)"
        )
    if not info.running:
        detail = f": {info.error}" if info.error else ""
        return f"the container exited with code {info.exit_code}{detail}"
    return ""


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _last(info: ContainerInfo | None, entries: int = 3) -> str:
    if info is None:
        return ""
    return "\n".join(output for output in info.health_output[-entries:] if output)
