"""``ci-agent``: the command line of the CI agent.

::

    ci-agent serve                        receive GitHub webhooks and run the pipeline for each push
    ci-agent run [--repo NAME] [--ref REF]  run one pipeline now (default: the tracked branch); exit 1 when it fails
    ci-agent doctor [--json]              check settings, Docker, registry push, GitHub token, disk, clock, email

Settings are read once (environment over ``.env``, plus ``CI_REPOS_FILE`` when it is set; SIGHUP
reads that file again); errors become a message on stderr and an exit code in exactly one place,
:func:`main`.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from ci_agent.host_env import shield_agent
from ci_agent.queue import KIND
from ci_agent.settings import CiSettings
from ci_agent.targets import FIELD_KEYS, RepoTargets, load_targets
from shared.errors import PiCicdError
from shared.logs import configure_logging
from shared.reference import HelpFormatter, settings_help
from shared.settings import load_settings, read_environment

if TYPE_CHECKING:
    from ci_agent.pipeline import Pipeline
    from shared.runstore import RunStore

PROG = "ci-agent"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=HelpFormatter,
        epilog=settings_help(CiSettings, FIELD_KEYS, file="repos file"),
        description="Receive GitHub push webhooks; check out the pushed commit, test it, build the Docker "
        "image and push it with the next semver tag. Settings come from CI_* variables (environment, then .env).",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=Path(".env"),
        metavar="PATH",
        help="file with settings, under the environment (default: .env in the working directory)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve",
        help="serve the webhook and run queued pipelines (until SIGTERM/SIGINT)",
        description="Listen on CI_HOST:CI_PORT for GitHub webhooks (POST /webhook; also GET /healthz and "
        "GET /badge.svg) and serve the dashboard and the run history (GET /, GET /runs) on "
        "CI_DASHBOARD_HOST:CI_DASHBOARD_PORT (127.0.0.1:8001 by default). Runs are executed one at a time "
        "(CI_MAX_PARALLEL_RUNS); a run a crash left unfinished is marked interrupted. With CI_POLL_INTERVAL set, "
        "the repository is also polled for the branch head and vX.Y.Z tags (for a Pi GitHub cannot reach). "
        "With CI_REPOS_FILE, every [repos.NAME] table of that TOML file is one repository; SIGHUP reads it again.",
    )
    run = commands.add_parser(
        "run",
        help="run one pipeline now and exit (non-zero when it fails)",
        description="Check out REF (a branch, a tag or a commit sha; default CI_BRANCH), test, build and push it "
        "now, in the foreground. Exits 0 when the run succeeded, 1 when it failed.",
    )
    run.add_argument("--ref", metavar="REF", help="branch, tag or commit to run (default: CI_BRANCH)")
    run.add_argument("--repo", metavar="NAME", help="the [repos.NAME] table to run (default: the file's first)")
    doctor = commands.add_parser(
        "doctor",
        help="check that this machine is ready: one line per check, with what to do about each problem",
        description="Check the settings (and every table of CI_REPOS_FILE), each Docker engine and its free space "
        "(DISK_MIN_FREE), that the registry login may push each image (an upload is started and cancelled: "
        "nothing is pushed), the GitHub token's right to write commit statuses, the webhook secret, the "
        "clock against the registry's and the SMTP login (nothing is sent). Exits 0 when ready (warnings "
        "allowed), 1 when a check failed, 2 when the settings are invalid. No secret is printed.",
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "doctor":
        return doctor(args.env_file, as_json=args.json)
    try:
        environ = read_environment(args.env_file)
        settings = load_settings(CiSettings, environ)
        targets = load_targets(settings, environ)
        configure_logging("ci", [*settings.secret_values(), *targets.secret_values()], level=settings.log_level)
        if any(target.test_runner == "host" for target in targets):
            # The tests run as this user: neither their environment nor this process's may give the secrets away.
            shield_agent([*settings.secret_values(), *targets.secret_values()])
        if args.command == "serve":
            return serve(settings, targets, environ)
        return run_once(settings, targets, args.ref, args.repo)
    except PiCicdError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        # The interpreter's last garbage collection walks every object the imports made (pydantic's
        # schemas, the Docker SDK): 0.1-0.3 s at exit of `ci-agent run` on a loaded 2-core machine.
        # Everything is finished and closed here; atexit handlers still run and objects freed by
        # reference counting are still finalized: only the cycle search over them is skipped.
        gc.freeze()


def doctor(env_file: Path, *, as_json: bool = False) -> int:
    """``ci-agent doctor``: its own settings finding, so a bad setting is one line among the others."""
    from ci_agent.doctor import diagnose
    from shared.doctor import run_doctor

    return run_doctor("ci", read_environment(env_file), diagnose, as_json=as_json)


def serve(settings: CiSettings, targets: RepoTargets, environ: Mapping[str, str] | None = None) -> int:
    # Imported here, not at the top: `ci-agent run` has no use for the web server (FastAPI alone is
    # a third of a second of imports on a Pi-class CPU; python -m bench.pipeline_overhead).
    from ci_agent.agent import open_agent
    from ci_agent.server import Listener
    from ci_agent.server import serve as serve_listeners

    with open_agent(settings, targets, environ) as agent:
        agent.recover()
        worker = agent.worker()
        worker.start()
        agent.start_pollers()
        try:
            logger.bind(agent="ci").info(
                "ci-agent serving on {}:{} (webhook) and {}:{} (dashboard{}), {} run(s) at a time, for {}",
                settings.ci_host,
                settings.ci_port,
                settings.ci_dashboard_host,
                settings.ci_dashboard_port,
                "; token required, also on the webhook port" if settings.ci_dashboard_token else "",
                settings.ci_max_parallel_runs,
                "; ".join(
                    f"{'[' + t.name + '] ' if targets.from_file else ''}{t.github_repo or 'any repository'} "
                    f"branch {t.branch} -> {t.image.name}"
                    for t in targets
                ),
            )
            serve_listeners(
                [
                    Listener("webhook", settings.ci_host, settings.ci_port, agent.app()),
                    Listener(
                        "dashboard",
                        settings.ci_dashboard_host,
                        settings.ci_dashboard_port,
                        agent.dashboard(),
                    ),
                ],
                on_reload=agent.reload,
            )
        finally:
            agent.pollers.stop(timeout=5)
            agent.queue.close()
            worker.stop(timeout=5)
    return 0


def run_once(settings: CiSettings, targets: RepoTargets, ref: str | None, repo: str | None = None) -> int:
    with open_pipeline(settings, targets, repo) as (store, pipeline):
        event = pipeline.event_for_ref(ref)
        run = store.create(
            kind=KIND, commit=event.after, ref=event.ref, details={"event": event.to_details()},
            scope=pipeline.target.name,
        )
        run = pipeline.execute(run, event)
        if run.status == "succeeded":
            print(f"run {run.number} succeeded: pushed {pipeline.image.with_tag(run.version or '?')}")
            return 0
        if run.status == "superseded":
            print(f"run {run.number} released nothing: {run.details.get('reason')}")
            return 0
        print(f"run {run.number} failed at step {run.failed_step}: {run.error}", file=sys.stderr)
        print(f"log: {run.log_path}", file=sys.stderr)
        return 1


@contextmanager
def open_pipeline(
    settings: CiSettings, targets: RepoTargets, repo: str | None = None
) -> Iterator[tuple[RunStore, Pipeline]]:
    """The agent's own wiring for a one-off run: no listener, worker or poller is started.

    ``ci_agent.agent`` imports no web stack (FastAPI comes with ``CiAgent.app``), so this costs a
    one-off run nothing it does not use. As at a server's start, a run a crash left ``running`` is
    marked ``interrupted`` first; on exit queued emails are waited for (bounded) and every connection
    is closed.
    """
    from ci_agent.agent import open_agent

    with open_agent(settings, targets) as agent:
        pipeline = agent.pipeline_for(repo)  # an unknown name stops here, before anything is marked
        agent.recover()
        yield agent.store, pipeline
