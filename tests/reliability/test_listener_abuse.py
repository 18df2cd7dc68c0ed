"""The CI agent's listeners facing strangers: what is public, exhaustion, and input that used to answer 500.

Each test starts ``ci-agent serve`` as a real process on loopback (no repository, registry or Docker
is needed: nothing here starts a run) and talks to it over real sockets. The exhaustion scenarios
start it under the file limit a service gets by default, soft 1024 (the hard limit is 524288, or
this machine's own hard limit when that is lower: only root can raise a hard limit), and measure the
agent's peak RSS from ``/proc/PID/status`` (``VmHWM``) and the growth of its console output.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from ci_agent.server import HEADER_TIMEOUT_SECONDS, connection_cap
from ci_agent.signature import sign
from tests.support.payloads import GITHUB_PAYLOADS
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.strangers import IdleCrowd, Uploaders

pytestmark = pytest.mark.slow

WEBHOOK_SECRET = "whsec-listener-abuse-P3r8-never-shown"
DASHBOARD_TOKEN = "dashboard-token-listener-Zt6-never-shown"
MIB = 1024 * 1024
SERVICE_SOFT_NOFILE = 1024
SERVICE_HARD_NOFILE = 524288
RSS_LIMIT_MIB = 150
CONSOLE_GROWTH_LIMIT = MIB
PING_ANSWER_SECONDS = 1.0
TRACEBACK = "Traceback (most recent call last)"
_PINGER = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


@dataclass
class Agent:
    """A running ``ci-agent serve``: its pid, its two listeners, its console output file."""

    process: subprocess.Popen[bytes]
    port: int
    dashboard_port: int
    console: Path
    answers: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def console_size(self) -> int:
        return self.console.stat().st_size

    def console_text(self) -> str:
        return self.console.read_text(errors="replace")

    def status(self, field_name: str) -> int:
        """A ``kB`` field of /proc/PID/status (VmHWM: peak RSS), in bytes."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
        assert match, text
        return int(match.group(1)) * 1024

    def soft_file_limit(self) -> str:
        text = Path(f"/proc/{self.process.pid}/limits").read_text()
        match = re.search(r"^Max open files\s+(\S+)\s+(\S+)", text, re.MULTILINE)
        assert match, text
        return f"{match.group(1)} soft / {match.group(2)} hard"

    def ping(self, timeout: float = 10.0) -> httpx.Response:
        raw = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(SecretStr(WEBHOOK_SECRET), raw),
        }
        # A fresh connection each time, as GitHub makes one per delivery; one client for all of them, so the
        # time is the agent's, not that of building an httpx client (an SSL context each, ~0.1-0.3 s here).
        response = _PINGER.post(f"{self.url}/webhook", content=raw, headers=headers, timeout=timeout)
        self.answers.append(response.text)
        return response

    def get(self, url: str, **kwargs: object) -> httpx.Response:
        response = httpx.get(url, timeout=10, **kwargs)  # type: ignore[arg-type]
        self.answers.append(response.text)
        return response


def _limit_files(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def service_hard_limit() -> int:
    """524288 as for a systemd service, unless this (unprivileged) process may not go that high."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return SERVICE_HARD_NOFILE if hard == resource.RLIM_INFINITY else min(SERVICE_HARD_NOFILE, hard)


@pytest.fixture
def start_agent(
    tmp_path: Path, secret: Callable[[str], str], produced: Callable[[str, str | bytes], None]
) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []
    secret(WEBHOOK_SECRET)
    secret(DASHBOARD_TOKEN)

    def start(*, soft: int = SERVICE_SOFT_NOFILE, hard: int | None = None, **overrides: str) -> Agent:
        root = tmp_path / f"agent{len(agents)}"
        root.mkdir()
        port, dashboard_port = free_port(), free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root),
            "CI_REPO_URL": str(root / "no-repository.git"),
            "CI_IMAGE": "127.0.0.1:9/abuse/app",
            "CI_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "CI_GITHUB_REPO": "Codertocat/Hello-World",
            "CI_HOST": "127.0.0.1",
            "CI_PORT": str(port),
            "CI_DASHBOARD_PORT": str(dashboard_port),
            "LOG_DIR": str(root / "logs"),
            "STATE_DIR": str(root / "state"),
            **overrides,
        }
        console = root / "ci_agent.out"
        with console.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "ci_agent", "serve"],
                cwd=root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_limit_files(soft, hard or service_hard_limit()),
            )
        agent = Agent(process, port, dashboard_port, console)
        agents.append(agent)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"ci-agent exited early:\n{agent.console_text()[-3000:]}")
            return httpx.get(f"{agent.url}/healthz", timeout=2).status_code == 200

        wait_for(ready, timeout=60, what="ci-agent ready")
        return agent

    yield start
    for agent in agents:
        if agent.process.poll() is None:
            os.killpg(agent.process.pid, signal.SIGTERM)
            try:
                agent.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(agent.process.pid, signal.SIGKILL)
                agent.process.wait(timeout=10)
        for answer in agent.answers:
            produced(f"answer of {agent.url}", answer)


# -- strangers on the wire --------------------------------------------------------------------------


@contextlib.contextmanager
def strangers(agent: Agent, idle: int, uploads: int) -> Iterator[tuple[IdleCrowd, Uploaders | None]]:
    crowd = IdleCrowd(agent.port, idle)
    uploaders = Uploaders(agent.port, uploads) if uploads else None
    try:
        yield crowd, uploaders
    finally:
        if uploaders is not None:
            uploaders.finish()
        crowd.leave()


def answers_as_before(agent: Agent) -> None:
    assert agent.ping().status_code == 200
    assert agent.get(f"{agent.url}/healthz").status_code == 200
    assert agent.get(f"{agent.dashboard_url}/runs").json() == []
    assert agent.process.poll() is None


# -- exhaustion (issue 8.3) -------------------------------------------------------------------------


@pytest.mark.reliability(
    "1,100 idle or half-sent connections plus 16 concurrent 25 MiB uploads without a valid signature (half with "
    "none, half a wrong one, each re-sent as soon as it ends), agent started under nofile soft 1024",
    f"a signed ping is answered 200 within {PING_ANSWER_SECONDS:g} s throughout; peak RSS (VmHWM) below "
    f"{RSS_LIMIT_MIB} MiB; console output grows by less than 1 MiB; the agent answers as before once they leave",
)
def test_idle_crowd_and_large_unsigned_uploads(start_agent: Callable[..., Agent], observed: Callable[[str], None]):
    agent = start_agent()
    observed(f"agent's file limit {agent.soft_file_limit()} (started with soft {SERVICE_SOFT_NOFILE})")
    before_rss = agent.status("VmHWM")
    console_before = agent.console_size()
    with strangers(agent, idle=1100, uploads=16) as (_crowd, uploaders):
        assert uploaders is not None
        # Every uploader is inside its first body now; each ping is a fresh connection beside them all.
        for _ in range(5):
            response = agent.ping(timeout=PING_ANSWER_SECONDS)
            assert response.status_code == 200, response.text
        wait_for(lambda: len(uploaders.outcomes) >= 16, timeout=120, what="16 uploads refused")
        assert agent.ping(timeout=PING_ANSWER_SECONDS).status_code == 200
    outcomes = uploaders.finish()
    peak = agent.status("VmHWM")
    growth = agent.console_size() - console_before
    answers_as_before(agent)
    assert not any(key.startswith(("HTTP/1.1 2", "HTTP/1.1 5")) and "503" not in key for key in outcomes), outcomes
    assert peak < RSS_LIMIT_MIB * MIB, f"peak RSS {peak / MIB:.0f} MiB"
    assert growth < CONSOLE_GROWTH_LIMIT, f"console grew by {growth} bytes"
    assert TRACEBACK not in agent.console_text()
    observed(
        f"6 signed pings during the abuse each answered 200 within {PING_ANSWER_SECONDS:g} s; uploads: {outcomes}; "
        f"peak RSS {peak / MIB:.0f} MiB (idle {before_rss / MIB:.0f} MiB); console +{growth} bytes, no traceback; "
        "ping, health and run list as before once they left"
    )


@pytest.mark.reliability(
    "1,100 idle connections to an agent that cannot raise its file limit (soft = hard = 1024)",
    "the oldest idle connections are closed to make room: a signed ping is answered 200 within 1 s, no accept() "
    "error storm (console grows by less than 1 MiB), answers as before afterwards",
)
def test_idle_crowd_beyond_the_file_limit(start_agent: Callable[..., Agent], observed: Callable[[str], None]):
    agent = start_agent(soft=SERVICE_SOFT_NOFILE, hard=SERVICE_SOFT_NOFILE)
    console_before = agent.console_size()
    cap = connection_cap(SERVICE_SOFT_NOFILE, listeners=2)
    with strangers(agent, idle=1100, uploads=0) as (crowd, _uploaders):
        # Once the agent has taken in the whole crowd (closing the oldest to stay under its cap) ...
        evicted = wait_for(
            lambda: crowd.closed_by_agent() >= 1100 - cap and crowd.closed_by_agent(),
            timeout=60,
            what=f"at least {1100 - cap} idle connections closed",
        )
        # ... GitHub still gets through.
        for _ in range(3):
            assert agent.ping(timeout=PING_ANSWER_SECONDS).status_code == 200
    growth = agent.console_size() - console_before
    answers_as_before(agent)
    assert growth < CONSOLE_GROWTH_LIMIT, f"console grew by {growth} bytes"
    assert "out of system resource" not in agent.console_text()
    assert "cannot accept connections" not in agent.console_text()
    observed(
        f"file limit {agent.soft_file_limit()}; cap {cap} connections per listener; {evicted} of 1100 idle "
        f"connections closed by the agent to make room; 3 signed pings answered 200 within "
        f"{PING_ANSWER_SECONDS:g} s; console +{growth} bytes"
    )


@pytest.mark.reliability(
    "a connection that sends nothing, and one that sends a request head one header line every 2 s and never ends it",
    f"both closed by the agent about {HEADER_TIMEOUT_SECONDS:g} s after they opened, not minutes later",
)
def test_slow_request_heads_are_cut_off(start_agent: Callable[..., Agent], observed: Callable[[str], None]):
    agent = start_agent()
    opened = time.monotonic()
    silent = socket.create_connection(("127.0.0.1", agent.port), timeout=60)
    trickle = socket.create_connection(("127.0.0.1", agent.port), timeout=60)
    trickle.sendall(b"POST /webhook HTTP/1.1\r\nHost: pi\r\n")
    closed_at: dict[str, float] = {}

    def check(name: str, sock: socket.socket) -> None:
        if name in closed_at:
            return
        sock.setblocking(False)
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data == b"" or data.startswith(b"HTTP/1.1 4"):
            closed_at[name] = time.monotonic() - opened

    sent = [time.monotonic()]

    def both_closed() -> bool:
        # A header line every 2 s; the closes are looked for more often, so the test ends soon after them.
        if time.monotonic() - sent[-1] >= 2.0:
            sent.append(time.monotonic())
            with contextlib.suppress(OSError):
                trickle.sendall(f"X-Slow-{len(sent)}-{sent[-1]:.0f}: 1\r\n".encode())
        check("silent", silent)
        check("trickle", trickle)
        return len(closed_at) == 2

    wait_for(both_closed, timeout=HEADER_TIMEOUT_SECONDS * 4, interval=0.2, what="both slow connections closed")
    silent.close()
    trickle.close()
    assert agent.ping().status_code == 200
    observed(f"closed after {closed_at['silent']:.0f} s (silent) and {closed_at['trickle']:.0f} s (trickling)")


@pytest.mark.reliability(
    "2,000 connections each sending a malformed request head",
    "each answered 400; the console grows by a few lines, not one warning per request (strangers choose how many)",
)
def test_malformed_heads_do_not_flood_the_console(start_agent: Callable[..., Agent], observed: Callable[[str], None]):
    agent = start_agent()
    console_before = agent.console_size()
    statuses: dict[bytes, int] = {}
    for _ in range(2000):
        with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            status = sock.recv(64).split(b"\r\n", 1)[0]
            statuses[status] = statuses.get(status, 0) + 1
    growth = agent.console_size() - console_before
    assert statuses == {b"HTTP/1.1 400 Bad Request": 2000}, statuses
    assert growth < 4096, f"console grew by {growth} bytes"
    assert agent.ping().status_code == 200
    observed(f"2000 x 400; console +{growth} bytes")


@pytest.mark.reliability(
    "the dashboard port is already taken by another program when ci-agent serve starts",
    "exit 1 with one line naming the address and the listener, no traceback",
)
def test_a_taken_port_is_a_clear_error(tmp_path: Path, observed: Callable[[str], None]):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "CI_REPO_URL": str(tmp_path / "no-repository.git"),
            "CI_IMAGE": "127.0.0.1:9/abuse/app",
            "CI_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "CI_HOST": "127.0.0.1",
            "CI_PORT": str(free_port()),
            "CI_DASHBOARD_PORT": str(port),
            "LOG_DIR": str(tmp_path / "logs"),
            "STATE_DIR": str(tmp_path / "state"),
        }
        done = subprocess.run(
            [sys.executable, "-m", "ci_agent", "serve"], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=120, check=False,
        )
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port} for the dashboard: Address already in use" in done.stderr
    assert TRACEBACK not in done.stdout + done.stderr
    observed(f"exit 1: {done.stderr.strip().splitlines()[-1]!r}")


# -- input that used to answer 500 (issue 8.5) ------------------------------------------------------


@pytest.mark.reliability(
    "a signed delivery whose body is JSON nested 100,000 deep",
    "400 naming the nesting, nothing queued, no traceback on the console (was 500 with a RecursionError)",
)
def test_deeply_nested_signed_json(start_agent: Callable[..., Agent], observed: Callable[[str], None]):
    agent = start_agent()
    raw = b"[" * 100_000 + b"]" * 100_000
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(SecretStr(WEBHOOK_SECRET), raw),
    }
    response = httpx.post(f"{agent.url}/webhook", content=raw, headers=headers, timeout=30)
    agent.answers.append(response.text)
    assert response.status_code == 400, response.text
    assert "nested" in response.json()["error"]
    assert agent.get(f"{agent.dashboard_url}/runs").json() == []
    assert TRACEBACK not in agent.console_text()
    observed(f"{response.status_code} {response.json()['error']!r}; 0 runs; no traceback")


@pytest.mark.reliability(
    "GET /runs/N and /runs/N/log with N = 2^63 and other numbers no run can have",
    "404, no traceback on the console (2^63 was 500 with an OverflowError)",
)
def test_run_numbers_beyond_sqlite(start_agent: Callable[..., Agent], observed: Callable[[str], None]):
    agent = start_agent()
    statuses = {}
    for number in ("9223372036854775808", "18446744073709551616", "0", "-1"):
        for suffix in ("", "/log"):
            path = f"/runs/{number}{suffix}"
            statuses[path] = agent.get(f"{agent.dashboard_url}{path}").status_code
    assert set(statuses.values()) == {404}, statuses
    assert TRACEBACK not in agent.console_text()
    observed(f"{len(statuses)} requests, all 404; no traceback")


def queue_a_run(agent: Agent) -> int:
    """A signed push of a random commit; its run fails at checkout (there is no repository) and has a log."""
    push = json.loads((GITHUB_PAYLOADS / "push_with-new-branch.payload.json").read_text())
    push.update(ref="refs/heads/main", after=uuid.uuid4().hex + uuid.uuid4().hex[:8])
    raw = json.dumps(push).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(SecretStr(WEBHOOK_SECRET), raw),
    }
    accepted = httpx.post(f"{agent.url}/webhook", content=raw, headers=headers, timeout=10)
    agent.answers.append(accepted.text)
    assert accepted.status_code == 202, accepted.text
    number: int = accepted.json()["run"]
    return number


@pytest.mark.reliability(
    "GET /runs/N by a browser (Accept: text/html) and by a script (Accept: */*)",
    "HTML to one, JSON to the other, both with Vary: Accept so no cache swaps them",
)
def test_one_run_says_vary_accept(start_agent: Callable[..., Agent], observed: Callable[[str], None]):
    agent = start_agent()
    number = queue_a_run(agent)
    html = agent.get(f"{agent.dashboard_url}/runs/{number}", headers={"Accept": "text/html,*/*;q=0.8"})
    data = agent.get(f"{agent.dashboard_url}/runs/{number}", headers={"Accept": "*/*"})
    assert html.headers["content-type"].startswith("text/html")
    assert data.headers["content-type"].startswith("application/json")
    assert html.headers.get("vary") == data.headers.get("vary") == "Accept"
    observed("text/html and application/json, both Vary: Accept")


# -- what is reachable where (issue 8.2) ------------------------------------------------------------

PRIVATE = ("/", "/runs", "/runs/1", "/runs/1/log")


@pytest.mark.reliability(
    "a stranger on the webhook port (CI_HOST:CI_PORT) asks for /, /runs, /runs/1, /runs/1/log, without a token set",
    "404 for each (no run data, no commit message); /webhook, /healthz, /badge.svg still answer; the dashboard "
    "answers on its own loopback listener",
)
def test_the_webhook_port_serves_no_run_data(start_agent: Callable[..., Agent], observed: Callable[[str], None]):
    agent = start_agent()
    statuses = {path: agent.get(f"{agent.url}{path}", headers={"Accept": "text/html"}).status_code for path in PRIVATE}
    assert set(statuses.values()) == {404}, statuses
    assert agent.get(f"{agent.url}/badge.svg").status_code == 200
    assert agent.ping().status_code == 200
    assert agent.get(f"{agent.dashboard_url}/").status_code == 200
    assert agent.get(f"{agent.dashboard_url}/runs").status_code == 200
    observed(f"public listener: {statuses}; badge 200, ping 200; dashboard listener: / and /runs 200")


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"me:{password}".encode()).decode()


@pytest.mark.reliability(
    "CI_DASHBOARD_TOKEN set; requests through a tunnel (so from 127.0.0.1) to both listeners without the "
    "token, with a wrong one, and with it as Bearer and as a Basic password",
    "401 with a Basic challenge without or with a wrong token on both listeners; 200 with it; the token never "
    "appears in an answer or on the console",
)
def test_the_dashboard_token(start_agent: Callable[..., Agent], observed: Callable[[str], None]):
    agent = start_agent(CI_DASHBOARD_TOKEN=DASHBOARD_TOKEN)
    results = []
    for base in (agent.url, agent.dashboard_url):
        for path in PRIVATE:
            refused = agent.get(f"{base}{path}")
            wrong = agent.get(f"{base}{path}", headers={"Authorization": f"Bearer {DASHBOARD_TOKEN}x"})
            assert refused.status_code == wrong.status_code == 401, (base, path)
            assert refused.headers["www-authenticate"].startswith("Basic ")
        for credentials in (f"Bearer {DASHBOARD_TOKEN}", _basic(DASHBOARD_TOKEN)):
            assert agent.get(f"{base}/runs", headers={"Authorization": credentials}).status_code == 200
            assert agent.get(f"{base}/", headers={"Authorization": credentials}).status_code == 200
        results.append(base)
    assert agent.ping().status_code == 200
    assert DASHBOARD_TOKEN not in agent.console_text()
    assert all(DASHBOARD_TOKEN not in answer for answer in agent.answers)
    observed("both listeners: 401 + Basic challenge without / with a wrong token, 200 with Bearer and with Basic")


# -- DNS rebinding and caches (issue 17) ------------------------------------------------------------

LOOPBACK_NAMES = ("localhost", "app.localhost", "127.0.0.1", "127.0.0.2", "[::1]")


def wait_for_log(agent: Agent, number: int, headers: dict[str, str] | None = None) -> None:
    def logged() -> bool:
        run = agent.get(f"{agent.dashboard_url}/runs/{number}", headers=headers or {}).json()
        return run["status"] in ("failed", "succeeded") and run["log_path"] is not None

    wait_for(logged, timeout=60, what=f"run {number} finished with a log")


@pytest.mark.reliability(
    "no CI_DASHBOARD_TOKEN, CI_PUBLIC_URL=https://ci.example.org; a web page whose domain rebinds to 127.0.0.1 "
    "(or reaches an `ssh -L` tunnel) asks the dashboard listener for /, /runs, /runs/N, /runs/N/log with "
    "Host: rebind.attacker.example:PORT",
    "421 Misdirected Request with a short plain-text reason for each, no run data, one log line each; "
    "localhost, *.localhost, 127.x.x.x and [::1] (with and without a port) and ci.example.org are answered; "
    "with CI_DASHBOARD_TOKEN set, a foreign Host carrying the token is answered as before",
)
def test_dns_rebinding_cannot_read_the_dashboard(start_agent: Callable[..., Agent], observed: Callable[[str], None]):
    agent = start_agent(CI_PUBLIC_URL="https://ci.example.org")
    number = queue_a_run(agent)
    wait_for_log(agent, number)
    port = agent.dashboard_port
    private = ("/", "/runs", f"/runs/{number}", f"/runs/{number}/log")
    foreign = {"Host": f"rebind.attacker.example:{port}", "Accept": "text/html,*/*;q=0.8"}
    refused = {path: agent.get(f"{agent.dashboard_url}{path}", headers=foreign) for path in private}
    codes = {path: answer.status_code for path, answer in refused.items()}
    assert set(codes.values()) == {421}, codes
    for answer in refused.values():
        assert answer.headers["content-type"].startswith("text/plain")
        assert len(answer.text) < 300 and "CI_DASHBOARD_TOKEN" in answer.text
        assert answer.text.startswith("421 Misdirected Request") and "refs/heads" not in answer.text
    lines = [line for line in agent.console_text().splitlines() if "rebind.attacker.example" in line]
    assert len(lines) == len(private), lines

    answered = {}
    for name in LOOPBACK_NAMES:
        for host in (name, f"{name}:{port}"):
            answered[host] = agent.get(f"{agent.dashboard_url}/runs", headers={"Host": host}).status_code
    own = agent.get(f"{agent.dashboard_url}/runs", headers={"Host": "ci.example.org"})
    answered["ci.example.org"] = own.status_code
    assert set(answered.values()) == {200}, answered

    locked = start_agent(CI_DASHBOARD_TOKEN=DASHBOARD_TOKEN)
    with_token = {"Host": "rebind.attacker.example", "Authorization": f"Bearer {DASHBOARD_TOKEN}"}
    token_codes = [agent.get(f"{base}/runs", headers=with_token).status_code
                   for base in (locked.url, locked.dashboard_url)]
    assert token_codes == [200, 200]
    observed(
        f"foreign Host: {sorted(set(codes.values()))} for {len(codes)} private paths, plain text "
        f"{refused['/runs'].text.strip()[:60]!r}..., {len(lines)} log lines; {len(answered)} loopback/own names: "
        f"{sorted(set(answered.values()))}; with a token, a foreign Host on both listeners: {token_codes}"
    )


@pytest.mark.reliability(
    "private answers (/, /runs, /runs/N as HTML and as JSON, /runs/N/log and a 404) on the dashboard listener "
    "without a token, and on both listeners with CI_DASHBOARD_TOKEN",
    "each says Cache-Control: no-store, so no browser or proxy cache keeps run data (/runs/N keeps Vary: Accept); "
    "the badge keeps Cache-Control: no-cache",
)
def test_private_answers_are_not_stored(start_agent: Callable[..., Agent], observed: Callable[[str], None]):
    checked: dict[str, str | None] = {}
    for token in (None, DASHBOARD_TOKEN):
        agent = start_agent(**({"CI_DASHBOARD_TOKEN": token} if token else {}))
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        number = queue_a_run(agent)
        wait_for_log(agent, number, auth)
        bases = (agent.dashboard_url, agent.url) if token else (agent.dashboard_url,)
        for base in bases:
            where = f"{'token' if token else 'no token'} {base.rsplit(':', 1)[1]}"
            for path, accept in (("/", "text/html"), ("/runs", "*/*"), (f"/runs/{number}", "text/html"),
                                 (f"/runs/{number}", "*/*"), (f"/runs/{number}/log", "*/*"), ("/runs/999", "*/*")):
                answer = agent.get(f"{base}{path}", headers={"Accept": accept, **auth})
                assert answer.status_code == (404 if path == "/runs/999" else 200), (where, path, answer.text)
                checked[f"{where} {path} {accept}"] = answer.headers.get("cache-control")
                if path == f"/runs/{number}":
                    assert answer.headers.get("vary") == "Accept"
            assert agent.get(f"{base}/badge.svg").headers.get("cache-control") == "no-cache"
    missing = {key: value for key, value in checked.items() if value != "no-store"}
    observed(f"{len(checked)} private answers, Cache-Control: {sorted({str(v) for v in checked.values()})}")
    assert not missing, missing
