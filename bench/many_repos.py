"""What serving many repositories costs one ``ci-agent serve``: idle memory and the webhook's answer time.

    python -m bench.many_repos                 # 5 rounds, 1 vs 10 repositories, 200 deliveries each
    python -m bench.many_repos --rounds 3 -n 100 --repos 1 10 30

Each round starts ``ci-agent serve`` (this checkout) once per size with a ``CI_REPOS_FILE`` of that
many ``[repos.NAME]`` tables, each with a webhook secret of its own (so the webhook computes one
HMAC per configured secret for every delivery), alternating the sizes so load changes hit both:

- **idle RSS**: after the agent answers ``/healthz``, it idles ``--idle`` seconds (nothing delivered
  yet), then VmRSS is read from ``/proc``;
- **ack**: ``WARM_UP`` then ``-n`` signed pushes for the file's *last* repository (its secret is
  the last one tried in file order) over one keep-alive connection (``bench.ack_latency.measure_ack``:
  the same payload, signature and timing), each with the ``X-GitHub-Hook-ID`` GitHub sends; every
  delivery queues a run (202); the worker's first run waits on a remote that never answers, as in
  ``bench/ack_latency.py``. ``--no-hook-id`` leaves the header out (every delivery then tries the
  secrets in file order: the worst case, 10 HMACs for 10 repositories).

Medians over the rounds are printed with the ratio of each size to the first (the issue's goal:
10 repositories within 1.1 x one). Every line carries the 1-minute load average.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.ack_latency import (
    PAYLOAD,
    REPO,
    WARM_UP,
    _free_port,
    _process,
    _wait_until_serving,
    load_average,
    measure_ack,
    percentile,
    silent_remote,
)

DELIVERED_REPOSITORY = "Codertocat/Hello-World"  # the payload's repository.full_name
HOOK_ID = {"X-GitHub-Hook-ID": "424242"}


def secret_of(index: int) -> str:
    return f"bench-many-repos-secret-{index:03d}-0123456789"


def repos_file(path: Path, count: int, repo_url: str) -> Path:
    tables = []
    for index in range(count):
        github_repo = DELIVERED_REPOSITORY if index == count - 1 else f"bench/repo-{index}"
        tables.append(
            f'[repos.r{index}]\nrepo_url = "{repo_url}"\ngithub_repo = "{github_repo}"\nbranch = "master"\n'
            f'image = "127.0.0.1:9/bench/many-{index}"\nwebhook_secret = "{secret_of(index)}"\n'
        )
    path.write_text("\n".join(tables))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def agent_serving(root: Path, count: int) -> Iterator[tuple[str, int]]:
    """``ci-agent serve`` with ``count`` repositories; yields (webhook URL, pid)."""
    prefixes = ("CI_", "CD_", "SMTP_", "NOTIFY_", "REGISTRY_", "LOG_", "STATE_DIR")
    port = _free_port()
    with silent_remote() as repo_url:
        environ = {
            **{key: value for key, value in os.environ.items() if not key.startswith(prefixes)},
            "PYTHONPATH": str(REPO),
            "CI_REPOS_FILE": str(repos_file(root / "repos.toml", count, repo_url)),
            "CI_HOST": "127.0.0.1",
            "CI_PORT": str(port),
            "CI_DASHBOARD_PORT": str(_free_port()),
            "STATE_DIR": str(root / "state"),
            "LOG_DIR": str(root / "logs"),
        }
        command = [sys.executable, "-m", "ci_agent", "serve"]
        with _process(command, environ, root, "ci-agent") as (process, log):
            _wait_until_serving(f"http://127.0.0.1:{port}/healthz", process, log)
            yield f"http://127.0.0.1:{port}/webhook", process.pid


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def round_of(count: int, n: int, idle: float, payload: bytes, hook_id: bool = True) -> tuple[float, float, float]:
    """(idle RSS MiB, ack p50 s, ack p99 s) of one fresh agent with ``count`` repositories."""
    headers = HOOK_ID if hook_id else {}
    with tempfile.TemporaryDirectory(prefix=f"many-repos-{count}-") as scratch:
        with agent_serving(Path(scratch), count) as (url, pid):
            time.sleep(idle)  # idle means idle: no delivery, no run, nothing to wait for
            rss = rss_mib(pid)
            measure_ack(url, secret_of(count - 1), payload, WARM_UP, extra_headers=headers)
            latencies = measure_ack(url, secret_of(count - 1), payload, n, extra_headers=headers)
    return rss, percentile(latencies, 0.5), percentile(latencies, 0.99)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=200, help="timed deliveries per round and size")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle before RSS is read")
    parser.add_argument("--repos", type=int, nargs="+", default=[1, 10], help="repository counts to compare")
    parser.add_argument("--no-hook-id", action="store_true", help="deliveries without X-GitHub-Hook-ID")
    args = parser.parse_args()
    payload = PAYLOAD.read_bytes()
    results: dict[int, list[tuple[float, float, float, float]]] = {count: [] for count in args.repos}
    print(f"{args.rounds} rounds; repositories {args.repos}; {args.n} deliveries of {PAYLOAD.name} each, "
          f"{'without' if args.no_hook_id else 'with'} X-GitHub-Hook-ID")
    for number in range(1, args.rounds + 1):
        for count in args.repos:
            rss, p50, p99 = round_of(count, args.n, args.idle, payload, not args.no_hook_id)
            load = load_average()
            results[count].append((rss, p50, p99, load))
            print(f"  round {number} {count:3} repos  idle RSS {rss:6.1f} MiB  ack p50 {1000 * p50:6.2f} ms  "
                  f"p99 {1000 * p99:6.2f} ms  (load {load:.2f})")
    print("medians over the rounds:")
    base = args.repos[0]
    medians = {
        count: tuple(statistics.median(row[i] for row in rows) for i in range(3)) for count, rows in results.items()
    }
    for count, (rss, p50, p99) in medians.items():
        loads = [row[3] for row in results[count]]
        ratio = "" if count == base else (
            f"  ratio to {base}: RSS {rss / medians[base][0]:.2f}, ack p99 {p99 / medians[base][2]:.2f}"
        )
        print(f"  {count:3} repos  idle RSS {rss:6.1f} MiB  ack p50 {1000 * p50:6.2f} ms  p99 {1000 * p99:6.2f} ms"
              f"  (load {min(loads):.2f}-{max(loads):.2f}){ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
