"""Helpers for ``scripts/demo``: ports, signed webhooks, and waiting for runs, deploys and mail.

Every wait polls with a deadline and fails with a message saying what did not happen. Settings are
read from the demo's env files (the same files the agents read), so the webhook secret never
appears on a command line.

    demo_tool.py free-port [--prefer 8080]
    demo_tool.py push --env-file ci.env --sha SHA --before SHA --message MSG     -> prints the run number
    demo_tool.py wait-run --env-file ci.env RUN [--timeout S]
    demo_tool.py wait-deploy --env-file cd.env --current X.Y.Z [--quarantined X.Y.Z] [--timeout S]
    demo_tool.py wait-url URL --contains TEXT [--timeout S]
    demo_tool.py mail --dir DIR --expect N [--timeout S]                       -> shows mails not shown yet
    demo_tool.py probe URL --until TEXT [--ready-file F] [--label L]          -> "N requests, M failed"
    demo_tool.py blue-green --env-file cd-bluegreen.env --url URL --from X.Y.Z --to X.Y.Z
                       -> deploys X, then upgrades to Y while probing URL; "N requests, M failed"
"""

from __future__ import annotations

import argparse
import email
import email.policy
import hashlib
import hmac
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from dotenv import dotenv_values

T = TypeVar("T")
FINISHED = ("succeeded", "failed", "superseded", "interrupted")


class DemoError(Exception):
    """A step of the demo did not happen in time (or went wrong); the message says which."""


def wait_for(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 1.0,
             progress: bool = True) -> T:
    """Call ``check`` until it returns something other than None/False; dots on stderr while waiting."""
    deadline = time.monotonic() + timeout
    last_error = ""
    dots = 0
    try:
        while True:
            try:
                result = check()
            except (httpx.HTTPError, OSError, ValueError) as exc:
                result, last_error = None, f" (last error: {exc})"
            if result is not None and result is not False:
                return result
            if time.monotonic() > deadline:
                raise DemoError(f"gave up after {timeout:g}s waiting for {what}{last_error}")
            if progress:
                print("    ." if dots == 0 else ".", end="", file=sys.stderr, flush=True)
                dots += 1
            time.sleep(interval)
    finally:
        if dots:
            print(file=sys.stderr, flush=True)


def settings(env_file: Path) -> dict[str, str]:
    return {key: value or "" for key, value in dotenv_values(env_file).items()}


# -- ports ----------------------------------------------------------------------------------------


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(prefer: int | None) -> int:
    if prefer and port_free(prefer):
        return prefer
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the CI agent ---------------------------------------------------------------------------------


def ci_url(env: dict[str, str]) -> str:
    """The webhook listener."""
    return f"http://127.0.0.1:{env.get('CI_PORT', '8000')}"


def ci_dashboard_url(env: dict[str, str]) -> str:
    """The dashboard listener: the run API is there, not on the webhook port."""
    return f"http://127.0.0.1:{env.get('CI_DASHBOARD_PORT', '8001')}"


def push_payload(env: dict[str, str], sha: str, before: str, message: str) -> dict[str, Any]:
    """A GitHub ``push`` payload with the fields the CI agent reads (and the usual ones around them)."""
    full_name = env.get("CI_GITHUB_REPO") or "demo/flask-app"
    owner, name = full_name.split("/", 1)
    commit = {
        "id": sha, "message": message, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "author": {"name": "pi-cicd demo", "email": "demo@localhost"},
    }
    return {
        "ref": f"refs/heads/{env.get('CI_BRANCH') or 'main'}",
        "before": before, "after": sha, "created": before == "0" * 40, "deleted": False, "forced": False,
        "repository": {"name": name, "full_name": full_name, "owner": {"name": owner, "login": owner},
                       "clone_url": env.get("CI_REPO_URL", "")},
        "pusher": {"name": "pi-cicd demo", "email": "demo@localhost"},
        "head_commit": commit, "commits": [commit],
    }


def sign(secret: str, body: bytes) -> str:
    """GitHub's ``X-Hub-Signature-256`` value: HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def push(env_file: Path, sha: str, before: str, message: str) -> int:
    env = settings(env_file)
    body = json.dumps(push_payload(env, sha, before, message)).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(env["CI_WEBHOOK_SECRET"], body),
        "User-Agent": "GitHub-Hookshot/pi-cicd-demo",
    }
    answer = httpx.post(f"{ci_url(env)}/webhook", content=body, headers=headers, timeout=10)
    if answer.status_code != 202 or "run" not in answer.json():
        raise DemoError(f"the CI agent answered the webhook with {answer.status_code}: {answer.text}")
    run: int = answer.json()["run"]
    print(run)
    return 0


def wait_run(env_file: Path, number: int, timeout: float) -> int:
    url = f"{ci_dashboard_url(settings(env_file))}/runs/{number}"

    def finished() -> dict[str, Any] | None:
        run: dict[str, Any] = httpx.get(url, timeout=5).json()
        return run if run.get("status") in FINISHED else None

    run = wait_for(finished, timeout=timeout, what=f"CI run {number} to finish", interval=0.5)
    print(f"    CI run {number}: {run['status']}"
          + (f", pushed version {run['version']}" if run.get("version") else "")
          + (f", failed at {run['failed_step']}: {run.get('error')}" if run.get("failed_step") else "")
          + (f" in {run['duration_seconds']:.0f}s" if run.get("duration_seconds") is not None else ""))
    print(f"    CI run log: {run.get('log_path')}")
    return 0 if run["status"] == "succeeded" else 1


# -- the CD agent ---------------------------------------------------------------------------------


def cd_status(env_file: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "cd_agent", "--env-file", str(env_file), "status", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if result.returncode != 0:
        raise ValueError(f"cd-agent status failed: {result.stderr.strip()}")
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def wait_deploy(env_file: Path, current: str, quarantined: str | None, timeout: float) -> int:
    log_dir = Path(settings(env_file).get("LOG_DIR", "logs/cd"))
    if not log_dir.is_absolute():
        log_dir = env_file.parent / log_dir

    def reached() -> dict[str, Any] | None:
        status = cd_status(env_file)
        deployed = (status.get("current") or {}).get("version")
        held = {item["version"] for item in status.get("quarantined", [])}
        settled = not status.get("deploy_in_progress")
        if settled and deployed == current and (quarantined is None or quarantined in held):
            return status
        if settled and current in held and current != deployed:
            # It was tried and rolled back: no point waiting out the timeout.
            reason = next(item["reason"] for item in status["quarantined"] if item["version"] == current)
            raise DemoError(f"the CD agent did not keep {current}: it is quarantined ({reason}); see {log_dir}")
        return None

    what = f"the CD agent to run {current}" + (f" with {quarantined} quarantined" if quarantined else "")
    status = wait_for(reached, timeout=timeout, what=what, interval=1)
    print(f"    CD: {current} is deployed" + (f" (previous: {status['previous']['version']})"
                                             if status.get("previous") else ""))
    for item in status.get("quarantined", []):
        print(f"    CD: {item['version']} is quarantined: {item['reason']}")
    logs = sorted(log_dir.glob("*_run-*.log"))
    if logs:
        print(f"    CD run log: {logs[-1]}")
    return 0


# -- the app and the mail -------------------------------------------------------------------------


def wait_url(url: str, contains: str, timeout: float) -> int:
    def answers() -> str | None:
        response = httpx.get(url, timeout=5)
        return response.text if response.status_code == 200 and contains in response.text else None

    text = wait_for(answers, timeout=timeout, what=f"{url} to answer with {contains!r}", interval=1)
    print(f"    GET {url} -> {text.strip()}")
    return 0


def show_mail(directory: Path, expect: int, timeout: float) -> int:
    shown_file = directory / ".shown"
    shown = set(shown_file.read_text().split()) if shown_file.exists() else set()

    def new_mail() -> list[Path] | None:
        fresh = [path for path in sorted(directory.glob("*.eml")) if path.name not in shown]
        return fresh if len(fresh) >= expect else None

    fresh = wait_for(new_mail, timeout=timeout, what=f"{expect} new email(s) in {directory}", interval=1,
                     progress=False)
    for path in fresh:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        print(f"    email {path.name} to {message['To']}")
        print(f"      Subject: {message['Subject']}")
        for line in [line for line in str(text).splitlines() if line.strip()][:4]:
            print(f"      | {line[:110]}")
    shown_file.write_text("\n".join(sorted(shown | {path.name for path in fresh})) + "\n")
    return 0


# -- what a user of the app sees during a release ------------------------------------------------

VERSION_IN_BODY = re.compile(r'"version"\s*:\s*"([^"]+)"')


class Prober:
    """GETs ``url`` every ``interval`` seconds on a thread, a new TCP connection each time (as a stream of
    separate visitors would), and counts the requests that failed: refused, reset, cut off, unanswered
    within ``request_timeout`` or answered with anything but 200.

    ``request_timeout`` is generous on purpose: a slow answer on a loaded machine is not a dropped
    request, and a request nobody answers still fails after it.
    """

    def __init__(self, url: str, *, interval: float = 0.02, request_timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.url = url
        self._host, self._port, self._path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
        self.interval = interval
        self.request_timeout = request_timeout
        self.requests = 0
        self.errors: list[str] = []
        self.versions: list[str] = []
        """The versions the good answers named, in order, each once per run of answers."""
        self.longest_gap = 0.0
        self._last_good: float | None = None
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(self.request_timeout + 5)

    def answers(self, version: str) -> int:
        """Good answers naming ``version`` so far."""
        with self._lock:
            return self._seen.get(version, 0)

    def good(self) -> int:
        with self._lock:
            return sum(self._seen.values())

    def summary(self) -> str:
        with self._lock:
            versions = " → ".join(self.versions) or "none"
            line = (f"{self.requests} requests, {len(self.errors)} failed (answers: {versions};"
                    f" longest gap between good answers {self.longest_gap:.2f}s)")
            if self.errors:
                kinds = Counter(error.partition(":")[0] for error in self.errors)
                line += "; failures: " + ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
            return line

    def _run(self) -> None:
        while not self._stop.is_set():
            error, version = self._get()
            now = time.monotonic()
            with self._lock:
                self.requests += 1
                if error:
                    self.errors.append(error)
                else:
                    if self._last_good is not None:
                        self.longest_gap = max(self.longest_gap, now - self._last_good)
                    self._last_good = now
                    if not self.versions or self.versions[-1] != version:
                        self.versions.append(version)
                    self._seen[version] = self._seen.get(version, 0) + 1
            self._stop.wait(self.interval)

    def _get(self) -> tuple[str, str]:
        """(error or "", the version the answer names)."""
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self.request_timeout)
        try:
            connection.request("GET", self._path, headers={"Connection": "close"})
            response = connection.getresponse()
            body = response.read().decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}", ""
        finally:
            connection.close()
        if response.status != 200:
            return f"HTTP {response.status}: {body[:60]!r}", ""
        found = VERSION_IN_BODY.search(body)
        return "", found.group(1) if found else body.strip()[:40]


def probe(url: str, until: str, then: int, ready_file: Path | None, label: str, timeout: float) -> int:
    """Probe ``url`` until ``then`` good answers named version ``until`` (a release has landed)."""
    with Prober(url) as prober:
        wait_for(prober.good, timeout=60, what=f"a first answer from {url}", interval=0.05, progress=False)
        if ready_file is not None:
            ready_file.touch()
        wait_for(lambda: prober.answers(until) >= then, timeout=timeout, what=f"{url} to answer {until}",
                 interval=0.1, progress=False)
    print(f"{label}: {prober.summary()}", flush=True)
    return 0


def blue_green(env_file: Path, url: str, start: str, target: str, timeout: float) -> int:
    """Deploy ``start`` (the proxy and network are created), then upgrade to ``target`` while a
    prober counts what a visitor would have seen."""
    def deploy(version: str) -> None:
        begun = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "cd_agent", "--env-file", str(env_file), "deploy", version, "--json"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        try:
            report: dict[str, Any] = json.loads(result.stdout)
        except ValueError:
            report = {}
        if result.returncode != 0 or report.get("outcome") != "deployed":
            said = f"{result.stdout.strip()} {result.stderr.strip()}".strip()
            raise DemoError(f"cd-agent deploy {version} did not deploy it: {said[-2000:]}")
        print(f"    cd-agent deploy {version}: deployed in {time.monotonic() - begun:.0f}s", flush=True)

    deploy(start)
    wait_url(url, f'"version":"{start}"', 60)
    with Prober(url) as prober:
        wait_for(prober.good, timeout=60, what=f"a first answer from {url}", interval=0.05, progress=False)
        deploy(target)
        # Answers after the switch too: the old container is stopped only after CD_PROXY_GRACE.
        wait_for(lambda: prober.answers(target) >= 25, timeout=60, what=f"{url} to answer {target}",
                 interval=0.1, progress=False)
    print(f"blue-green upgrade {start} → {target}: {prober.summary()}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Helpers for scripts/demo.")
    commands = parser.add_subparsers(dest="command", required=True)
    port = commands.add_parser("free-port")
    port.add_argument("--prefer", type=int)
    push_cmd = commands.add_parser("push")
    push_cmd.add_argument("--env-file", type=Path, required=True)
    push_cmd.add_argument("--sha", required=True)
    push_cmd.add_argument("--before", default="0" * 40)
    push_cmd.add_argument("--message", required=True)
    run_cmd = commands.add_parser("wait-run")
    run_cmd.add_argument("--env-file", type=Path, required=True)
    run_cmd.add_argument("run", type=int)
    run_cmd.add_argument("--timeout", type=float, default=900)
    deploy_cmd = commands.add_parser("wait-deploy")
    deploy_cmd.add_argument("--env-file", type=Path, required=True)
    deploy_cmd.add_argument("--current", required=True)
    deploy_cmd.add_argument("--quarantined")
    deploy_cmd.add_argument("--timeout", type=float, default=240)
    url_cmd = commands.add_parser("wait-url")
    url_cmd.add_argument("url")
    url_cmd.add_argument("--contains", required=True)
    url_cmd.add_argument("--timeout", type=float, default=60)
    mail_cmd = commands.add_parser("mail")
    mail_cmd.add_argument("--dir", type=Path, required=True, dest="directory")
    mail_cmd.add_argument("--expect", type=int, default=0)
    mail_cmd.add_argument("--timeout", type=float, default=60)
    probe_cmd = commands.add_parser("probe")
    probe_cmd.add_argument("url")
    probe_cmd.add_argument("--until", required=True, help="stop after --then good answers naming this version")
    probe_cmd.add_argument("--then", type=int, default=10)
    probe_cmd.add_argument("--ready-file", type=Path, help="touched after the first good answer")
    probe_cmd.add_argument("--label", default="probe")
    probe_cmd.add_argument("--timeout", type=float, default=600)
    bg_cmd = commands.add_parser("blue-green")
    bg_cmd.add_argument("--env-file", type=Path, required=True)
    bg_cmd.add_argument("--url", required=True)
    bg_cmd.add_argument("--from", required=True, dest="start")
    bg_cmd.add_argument("--to", required=True, dest="target")
    bg_cmd.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    try:
        if args.command == "free-port":
            print(free_port(args.prefer))
            return 0
        if args.command == "push":
            return push(args.env_file, args.sha, args.before, args.message)
        if args.command == "wait-run":
            return wait_run(args.env_file, args.run, args.timeout)
        if args.command == "wait-deploy":
            return wait_deploy(args.env_file, args.current, args.quarantined, args.timeout)
        if args.command == "wait-url":
            return wait_url(args.url, args.contains, args.timeout)
        if args.command == "probe":
            return probe(args.url, args.until, args.then, args.ready_file, args.label, args.timeout)
        if args.command == "blue-green":
            return blue_green(args.env_file, args.url, args.start, args.target, args.timeout)
        return show_mail(args.directory, args.expect, args.timeout)
    except (DemoError, httpx.HTTPError, KeyError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
