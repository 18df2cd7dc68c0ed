"""What a person sees of the CI agent: ``GET /`` (the runs), ``GET /runs/{n}`` as a page, the badges.

With several repositories (``CI_REPOS_FILE``) ``GET /`` lists the runs of all of them with links
that filter by one (``/?repo=NAME``), ``GET /runs?repo=NAME`` filters the run API the same way, a
run's JSON carries ``repo``, and each repository has its badge at ``/badge/NAME.svg``.
``/badge.svg`` is the badge of the one repository of an agent without a repos file (and of a file
with one table).

:func:`create_dashboard_app` is the private listener's app (``CI_DASHBOARD_HOST:CI_DASHBOARD_PORT``,
loopback by default): these pages and the run API (``GET /runs``, ``/runs/{n}``, ``/runs/{n}/log``),
behind ``CI_DASHBOARD_TOKEN`` when it is set (ci_agent/access.py). ``/healthz`` and ``/badge.svg``
answer without it, as on the public listener.

Plain HTML from ``string.Template`` with every value passed through ``html.escape``: no template
engine, no JavaScript, one inline style sheet. The pages show run fields and run logs only, never
settings beyond the repository, branch and image (the run logs are redacted by their sinks already).

``GET /runs/{n}`` answers JSON to API clients and HTML to browsers: :func:`prefers_html` reads the
``Accept`` header (``*/*`` and ties go to JSON, so scripts and curl keep getting JSON); both answers
say ``Vary: Accept`` so no cache hands one to a client that asked for the other. Every answer of this
app says ``Cache-Control: no-store`` unless it says otherwise (the badge): run data must not stay in
a browser's or a proxy's cache.

Without a token, this listener answers only to loopback names, ``CI_DASHBOARD_HOST`` and the host of
``CI_PUBLIC_URL`` (shared/host_check.py): a web page that rebinds its own domain to 127.0.0.1 gets
421, not the runs. With a token the token is the guard, under any name (it is also served on the
public port then, whose name is the user's own).
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from string import Template
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from loguru import logger

from ci_agent.access import dashboard_guard
from ci_agent.answers import install_error_answers
from ci_agent.errors import RunNotFound
from ci_agent.git import strip_credentials
from ci_agent.queue import KIND
from ci_agent.repos import LiveTargets
from ci_agent.settings import CiSettings
from ci_agent.targets import RepoTarget, RepoTargets, load_targets
from shared.badges import svg_badge
from shared.host_check import HostCheck, own_names
from shared.media_types import ANSI_ESCAPE, PAGE_HEADERS, prefers_html
from shared.runstore import Run, RunStore

LIST_LIMIT = 100
LOG_PAGE_BYTES = 256 * 1024
LIST_REFRESH_SECONDS = 10
RUN_REFRESH_SECONDS = 5
# Run numbers are SQLite integers; a larger one cannot exist (and would overflow the query).
MAX_RUN_NUMBER = 2**63 - 1
# The badge looks this far back for a finished run of the tracked branch.
_BADGE_SCAN_LIMIT = 1000

_HEADERS = PAGE_HEADERS
_ANSI = ANSI_ESCAPE

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#24292f;color:#fff;padding:12px 20px}
header h1{margin:0;font-size:18px}
header a{color:#fff}
header p{margin:4px 0 0;color:#d0d7de;font-size:13px}
main{padding:16px 20px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e1e4e8;vertical-align:top}
th{background:#f0f2f4;font-weight:600}
code{font:12px ui-monospace,monospace}
.status{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.succeeded{background:#2da44e}.failed{background:#cf222e}.running{background:#bf8700}
.queued{background:#6e7781}.superseded{background:#8c959f}.interrupted{background:#bc4c00}
.message{color:#57606a;font-size:12px}
.empty{padding:24px;background:#fff;border:1px dashed #d0d7de}
dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px;background:#fff;padding:12px}
dt{font-weight:600}dd{margin:0}
pre{background:#0d1117;color:#e6edf3;padding:12px;overflow-x:auto;font:12px/1.45 ui-monospace,monospace}
"""

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
$refresh<title>$title</title>
<style>$style</style>
</head>
<body>
<header>
<h1><a href="/">pi-cicd</a> · $title</h1>
<p>$about</p>
</header>
<main>
$body
</main>
</body>
</html>
""")

_LIST_HEAD = (
    "<table>\n<thead><tr><th>#</th><th>repo</th><th>status</th><th>commit</th><th>ref</th><th>version</th>"
    "<th>started</th><th>duration</th><th>failed step</th></tr></thead>\n<tbody>\n"
)
_LIST_ROW = Template(
    '<tr class="run"><td><a href="/runs/$number">#$number</a></td><td><a href="/?repo=$repo">$repo</a></td>'
    "<td>$status</td>"
    "<td><code>$commit</code>$message</td><td><code>$ref</code></td><td>$version</td>"
    "<td>$started</td><td>$duration</td><td>$failed_step</td></tr>\n"
)


def create_dashboard_app(settings: CiSettings, store: RunStore, targets: LiveTargets | None = None) -> FastAPI:
    """The dashboard and the run API; ``ci-agent serve`` serves it on the private listener."""
    live = targets if targets is not None else LiveTargets(load_targets(settings, {}))
    app = FastAPI(title="pi-cicd ci-agent dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_answers(app, "dashboard")
    private = [Depends(dashboard_guard(settings.ci_dashboard_token))]

    @app.middleware("http")
    async def no_store(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    if settings.ci_dashboard_token is None:
        # Added last, so it is the outermost layer: a refused request reaches nothing else.
        app.add_middleware(
            HostCheck, names=own_names(settings.ci_dashboard_host, settings.ci_public_url),
            log=logger.bind(agent="ci", component="dashboard"),
            reason="without CI_DASHBOARD_TOKEN the dashboard answers only to localhost, CI_DASHBOARD_HOST and "
            "the host of CI_PUBLIC_URL",
        )

    @app.get("/", response_class=HTMLResponse, dependencies=private)
    def runs_page(repo: str | None = Query(default=None, max_length=63)) -> HTMLResponse:
        runs = store.list(limit=LIST_LIMIT, scope=repo)
        return html_response(render_runs_page(live.current, runs, repo))

    @app.get("/metrics", dependencies=private)
    def metrics() -> Response:
        from ci_agent.metrics import CONTENT_TYPE, metrics_text

        return Response(metrics_text(store), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    @app.get("/runs", dependencies=private)
    def runs(
        limit: int = Query(default=50, ge=1, le=1000), repo: str | None = Query(default=None, max_length=63)
    ) -> list[dict[str, Any]]:
        return [run_json(run) for run in store.list(limit=limit, scope=repo)]

    @app.get("/runs/{number}", response_model=None, dependencies=private)
    def one_run(number: int, request: Request) -> Response:
        run = _existing(store, number)
        # JSON unless a browser asks for HTML (prefers_html): API clients see no change.
        if prefers_html(request.headers.get("Accept")):
            response: Response = html_response(render_run_page(live.current, run, read_log(run)))
        else:
            response = JSONResponse(run_json(run))
        response.headers["Vary"] = "Accept"
        return response

    @app.get("/runs/{number}/log", dependencies=private)
    def run_log(number: int) -> FileResponse:
        run = _existing(store, number)
        if run.log_path is None:
            raise RunNotFound(f"run {number} has no log yet")
        path = Path(run.log_path)
        if not path.is_file():
            raise RunNotFound(f"the log of run {number} is gone (pruned or moved)")
        # nosniff: a log holds text from the repository; a browser must never render it as HTML.
        return FileResponse(path, media_type="text/plain; charset=utf-8", headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    add_badge_route(app, store, live)
    return app


def run_json(run: Run) -> dict[str, Any]:
    """A run as the API answers it: the store's fields plus ``repo``."""
    return run.to_json(scope_key="repo")


def add_badge_route(app: FastAPI, store: RunStore, targets: LiveTargets) -> None:
    """``GET /badge/NAME.svg`` and ``GET /badge.svg``: public on every listener (a README on GitHub shows
    them through GitHub's proxy)."""

    def answer(target: RepoTarget) -> Response:
        # The environment's one repository owns every run of the store (as it always did).
        scope = target.name if target.from_file else None
        runs = store.list(limit=_BADGE_SCAN_LIMIT, kind=KIND, scope=scope)
        svg = render_badge(badge_for(runs, target.branch))
        # no-cache: GitHub's image proxy (camo) and browsers must ask again, or the badge goes stale.
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-cache", **_HEADERS})

    @app.get("/badge.svg")
    def badge() -> Response:
        current = targets.current
        if len(current) != 1:
            raise RunNotFound(
                f"this agent builds {len(current)} repositories: each has its badge at /badge/NAME.svg "
                f"({', '.join(current.names)})"
            )
        return answer(current.first)

    @app.get("/badge/{name}.svg")
    def repo_badge(name: str) -> Response:
        target = targets.current.get(name)
        if target is None:
            raise RunNotFound("no repository of that name")
        return answer(target)


def _existing(store: RunStore, number: int) -> Run:
    run = store.get(number) if 1 <= number <= MAX_RUN_NUMBER else None
    if run is None:
        raise RunNotFound(f"run {number} not found")
    return run


def html_response(page: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(page, status_code=status_code, headers=_HEADERS)


# -- pages ------------------------------------------------------------------------------------------


def render_runs_page(targets: RepoTargets, runs: Sequence[Run], repo: str | None = None) -> str:
    """The run list, newest first as given (only ``repo``'s when set); reloads itself every few seconds."""
    if runs:
        rows = "".join(_run_row(run) for run in runs)
        body = f"{_LIST_HEAD}{rows}</tbody>\n</table>"
    else:
        body = (
            '<p class="empty">No runs yet. A push to the tracked branch (through the GitHub webhook) '
            "or <code>ci-agent run</code> starts one.</p>"
        )
    refresh = f'<meta http-equiv="refresh" content="{LIST_REFRESH_SECONDS}">\n'
    if len(targets) > 1 or repo is not None:
        links = " · ".join(_repo_link(name, chosen=name == repo) for name in targets.names)
        body = f'<p class="repos">repositories: <a href="/">all</a> · {links}</p>\n{body}'
    return _page(targets, title="runs" if repo is None else f"runs of {repo}", body=body, refresh=refresh)


def _repo_link(name: str, *, chosen: bool) -> str:
    text = f"<b>{html.escape(name)}</b>" if chosen else html.escape(name)
    return f'<a href="/?repo={html.escape(name)}">{text}</a>'


def render_run_page(targets: RepoTargets, run: Run, log: str | None) -> str:
    """One run's fields and its log (``None``: no log, or it was pruned); reloads while unfinished."""
    fields = [
        ("status", _status(run.status)),
        ("repo", _text(run.scope)),
        ("kind", _text(run.kind)),
        ("commit", f"<code>{_text(run.commit)}</code>"),
        ("message", _text(_head_message(run) or "")),
        ("ref", f"<code>{_text(run.ref)}</code>"),
        ("version", _text(run.version)),
        ("created", _time(run.created_at)),
        ("started", _time(run.started_at)),
        ("finished", _time(run.finished_at)),
        ("duration", _duration(run)),
        ("failed step", _text(run.failed_step)),
        ("error", _text(run.error)),
    ]
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>\n" for name, value in fields)
    if log is None:
        log_html = '<p class="empty">No log for this run: it has not started, or its log was pruned.</p>'
    else:
        log_html = f"<pre>{html.escape(log)}</pre>"
    body = (
        f'<p><a href="/">← all runs</a> · <a href="/runs/{run.number}/log">raw log</a></p>\n'
        f"<dl>\n{items}</dl>\n<h2>Log</h2>\n{log_html}"
    )
    refresh = "" if run.finished else f'<meta http-equiv="refresh" content="{RUN_REFRESH_SECONDS}">\n'
    return _page(targets, title=f"run #{run.number}", body=body, refresh=refresh)


def read_log(run: Run, limit: int = LOG_PAGE_BYTES) -> str | None:
    """The run's log for a page: its last ``limit`` bytes, colour codes removed; ``None`` if there is none."""
    if run.log_path is None:
        return None
    path = Path(run.log_path)
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(size - limit, 0))
            data = handle.read()
    except OSError:
        return None
    text = _ANSI.sub("", data.decode("utf-8", errors="replace"))
    if size > limit:
        text = f"[… the first {size - limit} bytes are only in the raw log …]\n" + text.split("\n", 1)[-1]
    return text


def _page(targets: RepoTargets, *, title: str, body: str, refresh: str) -> str:
    if len(targets) == 1:
        target = targets.first
        repository = html.escape(target.github_repo or strip_credentials(target.repo_url))
        about = (
            f"repository <code>{repository}</code> · branch <code>{html.escape(target.branch)}</code> · "
            f"image <code>{html.escape(target.image.name)}</code>"
        )
    else:
        about = f"{len(targets)} repositories"
    return _PAGE.substitute(title=html.escape(title), refresh=refresh, style=_STYLE, about=about, body=body)


def _run_row(run: Run) -> str:
    message = _head_message(run)
    return _LIST_ROW.substitute(
        number=run.number,
        repo=_text(run.scope),
        status=_status(run.status),
        commit=_text(run.commit[:12] if run.commit else None),
        message=f'<br><span class="message">{_text(_first_line(message))}</span>' if message else "",
        ref=_text(_short_ref(run.ref)),
        version=_text(run.version),
        started=_time(run.started_at),
        duration=_duration(run),
        failed_step=_text(run.failed_step),
    )


def _head_message(run: Run) -> str | None:
    event = run.details.get("event")
    message = event.get("head_message") if isinstance(event, dict) else None
    return message if isinstance(message, str) else None


def _first_line(text: str | None, limit: int = 80) -> str:
    line = (text or "").strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _short_ref(ref: str | None) -> str | None:
    if ref is None:
        return None
    return ref.removeprefix("refs/heads/").removeprefix("refs/tags/")


def _status(status: str) -> str:
    escaped = html.escape(status)
    return f'<span class="status {escaped}">{escaped}</span>'


def _text(value: str | None) -> str:
    return "–" if value is None else html.escape(value)


def _time(moment: datetime | None) -> str:
    return "–" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(run: Run) -> str:
    seconds = run.duration_seconds
    if seconds is None:
        return "running" if run.status == "running" else "–"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


# -- badge ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Badge:
    """``ci | <status> | <version>``: status is passing, failing, running or unknown."""

    status: str
    version: str | None


_BADGE_COLOURS = {"passing": "#4c1", "failing": "#e05d44", "running": "#dfb317", "unknown": "#9f9f9f"}
_VERSION_COLOUR = "#007ec6"
_LABEL_COLOUR = "#555"


def badge_for(runs: Iterable[Run], branch: str) -> Badge:
    """The badge for CI ``runs`` (newest first).

    The status is that of the newest succeeded or failed run of ``branch`` (superseded and
    interrupted runs say nothing about the code); with none yet, "running" while one is queued or
    running, else "unknown". The version is the newest one released by any CI run (branch or tag).
    """
    ref = f"refs/heads/{branch}"
    status: str | None = None
    in_progress = False
    version: str | None = None
    for run in runs:
        if version is None and run.status == "succeeded" and run.version:
            version = run.version
        if status is None and run.ref == ref:
            if run.status in ("succeeded", "failed"):
                status = "passing" if run.status == "succeeded" else "failing"
            elif run.status in ("queued", "running"):
                in_progress = True
        if status is not None and version is not None:
            break
    if status is None:
        status = "running" if in_progress else "unknown"
    return Badge(status, version)


def render_badge(badge: Badge) -> str:
    """A flat shields.io-style SVG badge."""
    segments = [("ci", _LABEL_COLOUR), (badge.status, _BADGE_COLOURS[badge.status])]
    if badge.version is not None:
        segments.append((badge.version, _VERSION_COLOUR))
    return svg_badge(segments)
