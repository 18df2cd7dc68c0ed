"""How long a signed ping takes while strangers lean on ``ci-agent serve``'s webhook port, and what it costs.

    python -m bench.listener_abuse                       # 1,100 idle connections + 16 x 25 MiB uploads
    python -m bench.listener_abuse --idle 3000 --uploads 32 --pings 50

Starts a real ``ci-agent serve`` on loopback under nofile soft 1024 (as a service gets it), opens the
idle connections, starts the uploaders (25 MiB bodies without a valid signature, re-sent as soon as
each ends), then sends signed pings one after another on fresh connections and prints their
latencies, the agent's peak RSS and how much its console grew. No repository, registry or Docker
is needed: nothing here starts a run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from pydantic import SecretStr

from ci_agent.signature import sign
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.strangers import IdleCrowd, Uploaders

SECRET = "bench-listener-secret"  # noqa: S105 - a throw-away agent on loopback


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


# One client, no kept-alive connections: each ping is a fresh TCP connection (as GitHub's deliveries are)
# without paying for a new client (httpx builds an SSL context per client, ~100 ms on a busy Pi).
CLIENT = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=30)


def ping(url: str) -> float:
    raw = json.dumps({"zen": "bench", "hook_id": 1}).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(SecretStr(SECRET), raw),
    }
    started = time.perf_counter()
    answer = CLIENT.post(f"{url}/webhook", content=raw, headers=headers)
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"ping answered {answer.status_code}: {answer.text}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=1100, help="idle or half-sent connections")
    parser.add_argument("--uploads", type=int, default=16, help="concurrent 25 MiB uploaders")
    parser.add_argument("--pings", type=int, default=20, help="signed pings during the abuse")
    args = parser.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with tempfile.TemporaryDirectory(prefix="bench-listener-") as tmp:
        root = Path(tmp)
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root),
            "CI_REPO_URL": str(root / "none.git"),
            "CI_IMAGE": "127.0.0.1:9/bench/app",
            "CI_WEBHOOK_SECRET": SECRET,
            "CI_HOST": "127.0.0.1",
            "CI_PORT": str(port),
            "CI_DASHBOARD_PORT": str(free_port()),
            "LOG_DIR": str(root / "logs"),
            "STATE_DIR": str(root / "state"),
        }
        console = root / "ci_agent.out"
        with console.open("wb") as out:
            agent = subprocess.Popen(
                [sys.executable, "-m", "ci_agent", "serve"],
                env=env,
                cwd=root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, min(hard, 524288))),
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, timeout=60, what="agent")
            quiet = [ping(url) for _ in range(5)]
            idle_rss = peak_rss_mib(agent.pid)
            console_before = console.stat().st_size
            crowd = IdleCrowd(port, args.idle)
            uploaders = Uploaders(port, args.uploads) if args.uploads else None
            try:
                loaded = [ping(url) for _ in range(args.pings)]
            finally:
                outcomes = uploaders.finish() if uploaders is not None else {}
                crowd.leave()
            peak = peak_rss_mib(agent.pid)
            growth = console.stat().st_size - console_before
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=30)

    def summary(values: list[float]) -> str:
        ms = sorted(value * 1000 for value in values)
        return f"median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms ({len(ms)} pings)"

    print(f"signed ping, quiet:          {summary(quiet)}")
    print(f"signed ping, under abuse:    {summary(loaded)}  [{args.idle} idle, {args.uploads} uploaders]")
    print(f"peak RSS (VmHWM):            {idle_rss:.0f} MiB idle -> {peak:.0f} MiB")
    print(f"console growth:              {growth} bytes")
    print(f"upload outcomes:             {outcomes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
