"""How long a signed push delivery that queues a run waits for its answer: ci-agent beside Debian's ``webhook``.

    python -m bench.ack_latency                        # 5 rounds x 200 deliveries per tool, alternating
    python -m bench.ack_latency --rounds 3 -n 100 --tools ci-agent

Both servers are real processes on loopback and get the same bytes: GitHub's own example push
(``tests/fixtures/github/push_with-new-branch.payload.json``), signed with ``X-Hub-Signature-256``,
sent one after another over one keep-alive connection, each with a new ``X-GitHub-Delivery``. The
latency is from the first byte sent to the last byte of the answer read.

- ``ci-agent serve`` tracks ``master`` of a repository URL on loopback that accepts connections
  and never answers: every delivery records and queues a run (202); the worker's first run waits
  in its ``git fetch`` (no CPU) and later deliveries queue behind it, each superseding the previous
  one (same commit). So the measurement is about the answer, not the pipeline. ``--runs fail``
  uses an empty bare repository instead: the worker then runs one run after another (each fails
  at checkout, the commit is not there) while deliveries arrive, and they compete for the CPU.
- ``webhook`` (``apt-get install webhook``, adnanh/webhook) checks the same signature
  (``payload-hmac-sha256``) and starts ``/bin/true``: the seed's "webhook + script" shape.

Each round starts both servers afresh and warms them up with a few deliveries first. Every line
carries the 1-minute load average: on a shared machine the numbers move with it.

``measure_ack`` and the ``*_serving`` context managers are importable (bench/peers/ci.py uses them).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = REPO / "tests" / "fixtures" / "github" / "push_with-new-branch.payload.json"
SECRET = "bench-ack-latency-secret-0123456789"  # noqa: S105 - a throw-away server on loopback
BRANCH = "master"  # the payload's ref
WARM_UP = 20
TOOLS = ("ci-agent", "webhook")


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def measure_ack(
    url: str, secret: str, payload: bytes, n: int, *, event: str = "push", expect: int | None = None,
    extra_headers: dict[str, str] | None = None,
) -> list[float]:
    """Send ``n`` signed deliveries of ``payload`` to ``url`` over one keep-alive connection; seconds each.

    Each delivery has a new ``X-GitHub-Delivery`` id (so none is a duplicate) and is sent whole in
    one write; the answer is read to its end. An answer other than ``expect`` (any 2xx when None)
    raises ``RuntimeError``, so a benchmark never times refusals.
    """
    parts = urlsplit(url)
    path = parts.path or "/"
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-Hub-Signature-256": signature(secret, payload),
        "User-Agent": "GitHub-Hookshot/bench",
        **(extra_headers or {}),
    }
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
    connection.connect()
    # http.client writes the head and the body separately; with Nagle on, the body would wait for
    # the server's delayed ACK of the head (40 ms), which measures the client, not the server.
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies = []
    try:
        for _ in range(n):
            delivery = {**headers, "X-GitHub-Delivery": str(uuid.uuid4())}
            began = time.perf_counter()
            connection.request("POST", path, body=payload, headers=delivery)
            response = connection.getresponse()
            answer = response.read()
            latencies.append(time.perf_counter() - began)
            ok = response.status == expect if expect is not None else 200 <= response.status < 300
            if not ok:
                raise RuntimeError(f"{url} answered {response.status}: {answer[:200]!r}")
    finally:
        connection.close()
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.99 for p99) of ``values``."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=2)
            connection.request("GET", parts.path)
            connection.getresponse().read()
            connection.close()
            return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer within {timeout:g} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _process(command: list[str], environ: dict[str, str], root: Path, name: str) -> Iterator[
    tuple[subprocess.Popen[bytes], Path]
]:
    log = root / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=environ, cwd=root, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process, log
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def silent_remote() -> Iterator[str]:
    """A git URL whose server never answers: a run's fetch waits there, idle, until the agent stops."""
    # Listening without ever accepting: the kernel completes the handshakes, nobody reads the requests.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/app.git"


def empty_repository(root: Path) -> str:
    """A bare repository with no commits: a run fails at checkout within milliseconds."""
    repository = root / "app.git"
    if not repository.exists():
        subprocess.run(["git", "init", "--quiet", "--bare", str(repository)], check=True)
    return str(repository)


def ci_agent_environ(root: Path, secret: str, port: int, repo_url: str, **settings: str) -> dict[str, str]:
    """The environment of a throw-away ``ci-agent serve`` in ``root`` tracking ``master`` of ``repo_url``."""
    prefixes = ("CI_", "CD_", "SMTP_", "NOTIFY_", "REGISTRY_", "LOG_", "STATE_DIR")
    environ = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    return {
        **environ,
        "PYTHONPATH": str(REPO),
        "CI_REPO_URL": repo_url,
        "CI_BRANCH": BRANCH,
        # Nothing listens there: a run never gets that far, and nothing may be pushed anywhere.
        "CI_IMAGE": "127.0.0.1:9/bench/ack-latency",
        "CI_WEBHOOK_SECRET": secret,
        "CI_HOST": "127.0.0.1",
        "CI_PORT": str(port),
        "CI_DASHBOARD_PORT": str(_free_port()),
        "STATE_DIR": str(root / "state"),
        "LOG_DIR": str(root / "logs"),
        **settings,
    }


@contextlib.contextmanager
def ci_agent_serving(root: Path, secret: str = SECRET, *, runs: str = "park", **settings: str) -> Iterator[str]:
    """A real ``ci-agent serve`` (this checkout) in ``root``; yields its webhook URL.

    ``runs="park"``: the first run waits on a remote that never answers, the others stay queued;
    ``runs="fail"``: each run fails at checkout (an empty repository) and the worker takes the next.
    """
    port = _free_port()
    with contextlib.ExitStack() as stack:
        repo_url = stack.enter_context(silent_remote()) if runs == "park" else empty_repository(root)
        environ = ci_agent_environ(root, secret, port, repo_url, **settings)
        command = [sys.executable, "-m", "ci_agent", "serve"]
        process, log = stack.enter_context(_process(command, environ, root, "ci-agent"))
        _wait_until_serving(f"http://127.0.0.1:{port}/healthz", process, log)
        yield f"http://127.0.0.1:{port}/webhook"


@contextlib.contextmanager
def webhook_serving(root: Path, secret: str = SECRET, command: str = "/bin/true") -> Iterator[str]:
    """Debian's ``webhook`` in ``root`` with one hook that checks the signature and runs ``command``."""
    binary = shutil.which("webhook")
    if binary is None:
        raise RuntimeError("webhook is not installed (apt-get install -y webhook)")
    hooks = root / "hooks.json"
    hooks.write_text(json.dumps([{
        "id": "push",
        "execute-command": command,
        "response-message": "queued",
        "trigger-rule": {"match": {
            "type": "payload-hmac-sha256", "secret": secret,
            "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
        }},
    }]))
    port = _free_port()
    command_line = [binary, "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)]
    with _process(command_line, dict(os.environ), root, "webhook") as (process, log):
        _wait_until_serving(f"http://127.0.0.1:{port}/", process, log)
        yield f"http://127.0.0.1:{port}/hooks/push"


def serving(tool: str, root: Path, runs: str = "park") -> contextlib.AbstractContextManager[str]:
    """``ci-agent`` or ``webhook`` serving in ``root``; yields the URL deliveries go to."""
    return ci_agent_serving(root, runs=runs) if tool == "ci-agent" else webhook_serving(root)


def round_of(tool: str, n: int, payload: bytes, runs: str = "park") -> list[float]:
    """One round: a fresh server, ``WARM_UP`` deliveries not counted, then ``n`` timed ones."""
    with tempfile.TemporaryDirectory(prefix=f"ack-{tool}-") as scratch, serving(tool, Path(scratch), runs) as url:
        measure_ack(url, SECRET, payload, WARM_UP)
        return measure_ack(url, SECRET, payload, n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=200, help="timed deliveries per round and tool")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--runs", choices=("park", "fail"), default="park",
                        help="park: the worker waits in its first run's fetch; fail: every run fails at checkout")
    args = parser.parse_args()
    payload = PAYLOAD.read_bytes()

    results: dict[str, list[tuple[float, float, float]]] = {tool: [] for tool in args.tools}
    print(f"{args.rounds} rounds x {args.n} keep-alive deliveries of {PAYLOAD.name} ({len(payload)} bytes), "
          f"ci-agent runs: {args.runs}")
    for number in range(1, args.rounds + 1):
        for tool in args.tools:
            latencies = round_of(tool, args.n, payload, args.runs)
            p50, p99, load = percentile(latencies, 0.5), percentile(latencies, 0.99), load_average()
            results[tool].append((p50, p99, load))
            print(f"  round {number} {tool:9} p50 {1000 * p50:6.2f} ms  p99 {1000 * p99:6.2f} ms  "
                  f"max {1000 * max(latencies):6.2f} ms  (load {load:.2f})")
    print("medians over the rounds:")
    for tool, rows in results.items():
        p50 = statistics.median(row[0] for row in rows)
        p99 = statistics.median(row[1] for row in rows)
        loads = [row[2] for row in rows]
        print(f"  {tool:9} p50 {1000 * p50:6.2f} ms  p99 {1000 * p99:6.2f} ms  "
              f"(load {min(loads):.2f}-{max(loads):.2f})")
    if {"ci-agent", "webhook"} <= set(results):
        ratio = statistics.median(r[1] for r in results["ci-agent"]) / statistics.median(
            r[1] for r in results["webhook"])
        print(f"  p99 ratio ci-agent / webhook: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
