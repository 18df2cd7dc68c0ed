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
"""

from __future__ import annotations

import argparse
import email
import email.policy
import hashlib
import hmac
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

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

    run = wait_for(finished, timeout=timeout, what=f"CI run {number} to finish", interval=2)
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
    def reached() -> dict[str, Any] | None:
        status = cd_status(env_file)
        deployed = (status.get("current") or {}).get("version")
        held = {item["version"] for item in status.get("quarantined", [])}
        settled = not status.get("deploy_in_progress")
        if settled and deployed == current and (quarantined is None or quarantined in held):
            return status
        return None

    what = f"the CD agent to run {current}" + (f" with {quarantined} quarantined" if quarantined else "")
    status = wait_for(reached, timeout=timeout, what=what, interval=1)
    print(f"    CD: {current} is deployed" + (f" (previous: {status['previous']['version']})"
                                             if status.get("previous") else ""))
    for item in status.get("quarantined", []):
        print(f"    CD: {item['version']} is quarantined: {item['reason']}")
    log_dir = Path(settings(env_file).get("LOG_DIR", "logs/cd"))
    if not log_dir.is_absolute():
        log_dir = env_file.parent / log_dir
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
        return show_mail(args.directory, args.expect, args.timeout)
    except (DemoError, httpx.HTTPError, KeyError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
