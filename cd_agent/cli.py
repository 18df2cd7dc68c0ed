"""``cd-agent``: the command line of the CD agent.

::

    cd-agent watch                                   reconcile every app, then poll and deploy new releases
    cd-agent deploy [--app NAME] [VERSION] [--force] deploy VERSION (the newest release when omitted) now
    cd-agent rollback [--app NAME]                   go back to the previous version
    cd-agent status [--app NAME] [--json]            deployed, previous, quarantined, last poll and deploy
    cd-agent doctor [--json]                         check settings, Docker, registry pull, disk, strategy, clock, email

Settings (and ``CD_APPS_FILE``'s apps) are read once (environment over ``.env``); ``--app`` may be left out
when there is one app. Errors are turned into a message on stderr and an exit code in exactly one place,
:func:`main`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from loguru import logger

from cd_agent.apps import FIELD_KEYS, AppTarget, Targets, check_at_start, load_targets
from cd_agent.errors import DeployError
from cd_agent.settings import CdSettings
from cd_agent.state import DeployState
from shared.errors import PiCicdError
from shared.logs import configure_logging
from shared.reference import HelpFormatter, settings_help
from shared.runstore import RunStore
from shared.settings import read_environment
from shared.versions import parse_version

if TYPE_CHECKING:
    from cd_agent.report import DeployReport

PROG = "cd-agent"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=HelpFormatter,
        epilog=settings_help(CdSettings, FIELD_KEYS, file="apps file"),
        description="Watch a container registry and deploy new releases of an app container, with health "
        "checks and rollback. Settings come from CD_* variables (environment, then .env).",
    )
    parser.add_argument(
        "--env-file", type=Path, default=Path(".env"), metavar="PATH",
        help="file with settings, under the environment (default: .env in the working directory)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    app = argparse.ArgumentParser(add_help=False)
    app.add_argument("--app", metavar="NAME", help="the app (a [apps.NAME] of CD_APPS_FILE); optional with one app")

    commands.add_parser(
        "watch", help="poll the registry and deploy new releases (runs until SIGTERM/SIGINT)",
        description="Finish or undo an interrupted deploy of every app, then poll the registry every "
        "CD_POLL_INTERVAL seconds (each app its own) and deploy each new release. SIGHUP reloads "
        "CD_APPS_FILE. Stops cleanly on SIGTERM or SIGINT.",
    )

    deploy = commands.add_parser(
        "deploy", parents=[app], help="deploy a version now (the newest release when VERSION is omitted)",
        description="Deploy VERSION now, with the same swap, health check and rollback as the watcher. "
        "Without VERSION: the newest release within CD_VERSION_CONSTRAINT that is not quarantined.",
    )
    deploy.add_argument("version", nargs="?", metavar="VERSION", help="a release tag like 1.2.3")
    deploy.add_argument("--force", action="store_true", help="deploy even a quarantined or already running version")
    deploy.add_argument("--json", action="store_true", help="print the deploy report as JSON")

    rollback = commands.add_parser(
        "rollback", parents=[app], help="go back to the previous version",
        description="Deploy the previous version again; the version rolled back from is quarantined so the "
        "watcher does not bring it straight back.",
    )
    rollback.add_argument("--json", action="store_true", help="print the report as JSON")

    status = commands.add_parser(
        "status", parents=[app], help="show the deployed and previous version, quarantine and polls of each app",
        description="Show, for every app (or the one --app names), what is deployed, what was before, which "
        "versions are quarantined, when the watcher last polled and polls next, and the last deploy.",
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    doctor = commands.add_parser(
        "doctor", help="check that this machine is ready: one line per check, with what to do about each problem",
        description="Check the settings (and every app of CD_APPS_FILE), the Docker Engine and its free space "
        "(DISK_MIN_FREE), that the registry login may pull each app's image (its tags and newest release's "
        "manifest are read: nothing is pulled), for blue-green apps the proxy image, for swarm apps that the "
        "engine is a swarm manager and whether the service exists, for compose apps which compose is installed "
        "and that the files give the service an image: (compose config), the clock against the registry's and "
        "the SMTP login of each distinct mail configuration of the apps (nothing is sent). Exits 0 when ready "
        "(warnings allowed), 1 when a check failed, 2 when the settings are invalid. No secret is printed.",
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the exit code (0 ok, 1 failed, 2 bad settings or usage, see errors.py)."""
    args = build_parser().parse_args(argv)
    if args.command == "doctor":
        return doctor(args.env_file, as_json=args.json)
    try:
        targets = load_targets(read_environment(args.env_file))
        if args.command in DEPLOYING:
            check_at_start(targets)  # compose config: only where compose will run, never for `status`
        configure_logging("cd", targets.secret_values(), level=targets.settings.log_level)
        return COMMANDS[args.command](targets, args)
    except PiCicdError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def doctor(env_file: Path, *, as_json: bool = False) -> int:
    """``cd-agent doctor``: its own settings finding, so a bad setting is one line among the others."""
    from cd_agent.doctor import diagnose
    from shared.doctor import run_doctor

    return run_doctor("cd", read_environment(env_file), diagnose, as_json=as_json)


def watch(targets: Targets, args: argparse.Namespace) -> int:
    # Only what an idle poll uses is imported here: the reconcile and each deploy run in a child process
    # (cd_agent.child_deploys), so Docker's SDK and the deployer never become resident in the watcher.
    from cd_agent.apps_watch import AppsWatch
    from cd_agent.listener import Listener, ListenerConfig, first_page
    from cd_agent.status_pages import StatusPages

    stop, wake, reload_requested = threading.Event(), threading.Event(), threading.Event()
    watch = AppsWatch(
        targets, load=lambda: check_at_start(load_targets(read_environment(args.env_file))), python=sys.executable
    )
    settings = targets.settings  # the listener's settings are the agent's: a reload does not move it
    listener = Listener(
        ListenerConfig(
            settings.cd_dashboard_host, settings.cd_dashboard_port, settings.cd_dashboard_token, settings.cd_hook_token
        ),
        watch,
        first_page(watch.metrics.page, StatusPages(lambda: watch.targets, watch.metrics.readers)),
    )
    listener.start()
    try:
        with _stopping_on_signals(stop, wake, reload_requested):
            watch.run(stop, wake, reload_requested)
    finally:
        listener.stop()
        watch.metrics.readers.close()
    return 0


def deploy(targets: Targets, args: argparse.Namespace) -> int:
    from cd_agent.agent import open_agent

    target = targets.app(args.app)
    if args.version is not None and parse_version(args.version) is None:
        build_parser().error(f"VERSION must be a release tag like 1.2.3, v1.2.3 or 1.2.3-rc.1, not {args.version!r}")
    with open_agent(targets.settings_of(target), target, siblings=targets.siblings(target)) as agent:
        report = agent.deploy(args.version, force=args.force)
    return _finish(report, "deploy", args.json)


def rollback(targets: Targets, args: argparse.Namespace) -> int:
    from cd_agent.agent import open_agent

    target = targets.app(args.app)
    with open_agent(targets.settings_of(target), target, siblings=targets.siblings(target)) as agent:
        report = agent.deployer.rollback()
    return _finish(report, "rollback", args.json)


def status(targets: Targets, args: argparse.Namespace) -> int:
    apps = [targets.app(args.app)] if args.app is not None or len(targets.apps) == 1 else list(targets.apps)
    data = [app_status(app) for app in apps]
    if args.json:
        # One app answers as `status --json` always did; several are listed under "apps".
        if len(data) == 1:
            answer = {key: value for key, value in data[0].items() if key not in ("app", "last_deploy")}
        else:
            answer = {"apps": data}
        print(json.dumps(answer, indent=2))
        return 0
    now = datetime.now(UTC)
    blocks = []
    for item in data:
        last = item.pop("last_deploy")
        text = format_status(item, now=now)
        blocks.append(text + format_last_deploy(last, now, width=len(text.split("  ", 1)[0]) + 2))
    print("\n".join(blocks), end="")
    return 0


def app_status(target: AppTarget) -> dict[str, Any]:
    """What ``cd-agent status`` shows of one app; ``app`` and ``last_deploy`` only for the listing."""
    with DeployState(target.paths.state) as state:
        data: dict[str, Any] = {"image": target.image.name, "container": target.container_name, **state.to_json()}
    from cd_agent.strategies import STRATEGIES

    status_of = STRATEGIES[target.strategy].status
    if status_of is not None:
        data["service"] = status_of(target)
    return {"app": target.name, **data, "last_deploy": _last_deploy(target)}


def _last_deploy(target: AppTarget) -> dict[str, Any] | None:
    if not target.paths.runs.exists():
        return None
    with RunStore(target.paths.runs) as runs:
        last = runs.list(limit=1, kind="deploy")
    if not last:
        return None
    run = last[0]
    return {"run": run.number, "version": run.version, "status": run.status,
            "at": (run.finished_at or run.started_at or run.created_at).isoformat()}


def format_last_deploy(last: dict[str, Any] | None, now: datetime, *, width: int) -> str:
    if last is None:
        return f"{'last deploy'.ljust(width)}-\n"
    return (f"{'last deploy'.ljust(width)}run {last['run']}: {last['version'] or '?'} {last['status']}, "
            f"{_when(last['at'], now)}\n")


COMMANDS: dict[str, Callable[[Targets, argparse.Namespace], int]] = {
    "watch": watch, "deploy": deploy, "rollback": rollback, "status": status,
}
# The commands that may run a strategy's tools (compose), so check them at start-up (StrategyRow.start_check).
DEPLOYING = frozenset({"watch", "deploy", "rollback"})


def _finish(report: DeployReport, action: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    if report.outcome in ("deployed", "noop"):
        if not as_json:
            print(_summary(report))
        return 0
    raise DeployError(
        f"{action} of {report.version} {report.outcome.replace('_', ' ')}: {report.error or 'see the run log'}"
        + (f" (run {report.run})" if report.run is not None else ""),
        version=report.version,
    )


def _summary(report: DeployReport) -> str:
    if report.outcome == "noop":
        return f"{report.version} is already deployed and running"
    text = f"deployed {report.version}"
    if report.previous:
        text += f" (was {report.previous})"
    details = [f"run {report.run}"] if report.run is not None else []
    details.append(f"{report.duration_s:.1f}s")
    if report.downtime_s is not None:
        details.append(f"downtime {report.downtime_s:.1f}s")
    return f"{text}; {', '.join(details)}"


def format_status(data: dict[str, Any], *, now: datetime) -> str:
    """The status as aligned ``label  value`` lines for a terminal."""
    rows: list[tuple[str, str]] = [("app", data["app"])] if "app" in data else []
    rows += [("image", data["image"]), ("container", data["container"])]
    rows.append(("deployed", _release(data["current"], now)))
    rows.append(("previous", _release(data["previous"], now)))
    quarantined = data["quarantined"]
    if not quarantined:
        rows.append(("quarantined", "-"))
    for index, item in enumerate(quarantined):
        since = _when(item["since"], now)
        rows.append(("quarantined" if index == 0 else "", f"{item['version']} since {since}: {item['reason']}"))
    rows.append(("last poll", _when(data["last_poll_at"], now)))
    rows.append(("next poll", _when(data["next_poll_at"], now)))
    if data.get("last_error"):
        rows.append(("last error", data["last_error"]))
    progress = data.get("deploy_in_progress")
    if progress:
        rows.append(("in progress", f"deploy of {progress['version']} (at {progress['phase']})"))
    rows.extend(_service_rows(data.get("service")))
    width = max(len(label) for label, _ in rows) + 2
    return "".join(f"{label.ljust(width)}{value}\n" for label, value in rows)


def _service_rows(service: dict[str, Any] | None) -> list[tuple[str, str]]:
    if service is None:
        return []
    if service.get("error"):
        return [("service", f"{service['name']}: {service['error']}")]
    if not service.get("exists"):
        return [("service", f"{service['name']}: none yet (the next deploy creates it)")]
    update = f", update {service['update_state']}" if service.get("update_state") else ""
    rows = [("service", f"{service['name']}: {service['replicas']} replicas of {service['version']}{update}")]
    for task in service["tasks"]:
        error = f" ({task['error']})" if task.get("error") else ""
        rows.append(("", f"replica {task['slot']}: {task['version']} on {task['node']}, {task['state']}{error}"))
    return rows


def _release(release: dict[str, Any] | None, now: datetime) -> str:
    if release is None:
        return "-"
    text = release["version"]
    if release.get("digest"):
        text += f"  {release['digest'][:19]}…"
    if release.get("deployed_at"):
        text += f"  since {_when(release['deployed_at'], now)}"
    return str(text)


def _when(iso: str | None, now: datetime) -> str:
    if iso is None:
        return "never"
    at = datetime.fromisoformat(iso)
    seconds = (at - now).total_seconds()
    relative = f"in {_duration(seconds)}" if seconds >= 0 else f"{_duration(-seconds)} ago"
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({relative})"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


@contextmanager
def _stopping_on_signals(
    stop: threading.Event, wake: threading.Event, reload_requested: threading.Event
) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (deploys under way finish first, then the loop ends); SIGHUP sets
    ``reload_requested`` (what ``systemctl reload`` sends). Either sets ``wake``."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            logger.info("SIGHUP received: reloading the apps")
            reload_requested.set()
        else:
            logger.info("{} received: stopping after the current step", signal.Signals(signum).name)
            stop.set()
        wake.set()

    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
