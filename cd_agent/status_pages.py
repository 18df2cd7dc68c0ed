"""What a person (or a script) sees of the CD agent on its listener::

    GET /                        every app: running, previous, quarantined and why, last poll and its outcome
    GET /apps/NAME               one app, with its last deploys and their logs
    GET /apps/NAME/runs/N/log    a deploy's log (its last 256 KiB), as text
    GET /badge/NAME.svg          "deployed | 1.2.3"

``/`` and ``/apps/NAME`` answer JSON to API clients and HTML to browsers (``Accept``, as the CI
dashboard does; ``Vary: Accept``). Plain HTML from ``string.Template``, every value through
``html.escape``, no script, one inline style sheet, a Content-Security-Policy that loads nothing. The
pages show state and run fields only (versions, digests, times, reasons, errors), never a setting
beyond the image and container names; run logs are redacted by their sinks already.

Everything is read from the apps' state files at each request (the watcher and its deploy processes
write them), through connections kept open (``cd_agent.state_readers``: a view writes nothing); an app
that has never polled shows an empty state, and nothing is created by reading.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

from cd_agent.apps import AppTarget, Targets
from cd_agent.listener import Answer, Request
from cd_agent.state_readers import StateReaders
from shared.badges import svg_badge
from shared.media_types import ANSI_ESCAPE, PAGE_HEADERS, prefers_html
from shared.runstore import Run

DEPLOYS_SHOWN = 20
LOG_TAIL_BYTES = 256 * 1024
REFRESH_SECONDS = 10
_HEADERS = {**PAGE_HEADERS, "Vary": "Accept"}
_APP = re.compile(r"^/apps/([^/]+)$")
_LOG = re.compile(r"^/apps/([^/]+)/runs/([0-9]{1,18})/log$")
_BADGE = re.compile(r"^/badge/([^/]+)\.svg$")

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#24292f;color:#fff;padding:12px 20px}header h1{margin:0;font-size:18px}header a{color:#fff}
main{padding:16px 20px}section{background:#fff;border:1px solid #e1e4e8;margin:0 0 16px;padding:8px 12px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e1e4e8}
dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px}dt{font-weight:600}dd{margin:0}
code{font:12px ui-monospace,monospace}.error{color:#cf222e}
pre{background:#0d1117;color:#e6edf3;padding:12px;overflow-x:auto;font:12px/1.45 ui-monospace,monospace}
"""
_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="$refresh">
<title>$title</title>
<style>$style</style>
</head>
<body>
<header><h1><a href="/">pi-cicd cd-agent</a> · $title</h1></header>
<main>
$body
</main>
</body>
</html>
""")


class StatusPages:
    """The pages of the apps ``targets()`` returns (the watcher's current ones: a reload changes them),
    read through ``readers`` (the listener's, shared with /metrics)."""

    def __init__(self, targets: Callable[[], Targets], readers: StateReaders) -> None:
        self._targets = targets
        self._readers = readers

    def __call__(self, request: Request) -> Answer | None:
        if request.method not in ("GET", "HEAD"):
            return None
        html_wanted = prefers_html(request.headers.get("accept"))
        readers = self._readers
        targets = self._targets()
        readers.retain(path for app in targets.apps for path in (app.paths.state, app.paths.runs))
        if request.path == "/":
            apps = [app_status(app, readers) for app in targets.apps]
            if html_wanted:
                return _html("apps", "\n".join(_app_section(item, link=True) for item in apps))
            return _json({"apps": apps})
        if (match := _APP.match(request.path)) is not None:
            target = self._app(match.group(1))
            if target is None:
                return _not_found(match.group(1))
            item = app_status(target, readers, deploys=DEPLOYS_SHOWN)
            if html_wanted:
                return _html(target.name, _app_section(item, link=False) + _deploys_table(target.name, item["deploys"]))
            return _json(item)
        if (match := _LOG.match(request.path)) is not None:
            target = self._app(match.group(1))
            return _not_found(match.group(1)) if target is None else _log(target, readers, int(match.group(2)))
        if (match := _BADGE.match(request.path)) is not None:
            target = self._app(match.group(1))
            return _not_found(match.group(1)) if target is None else _badge(target, readers)
        return None

    def _app(self, name: str) -> AppTarget | None:
        return next((app for app in self._targets().apps if app.name == name), None)


def app_status(target: AppTarget, readers: StateReaders, *, deploys: int = 1) -> dict[str, Any]:
    """One app as the pages show it: ``cd-agent status --json``'s fields, its name, its last ``deploys``."""
    state: dict[str, Any] = {
        "current": None, "previous": None, "quarantined": [], "last_poll_at": None, "next_poll_at": None,
        "last_error": None, "deploy_in_progress": None,
    }
    with readers.deploy_state(target.paths.state) as deploy_state:
        if deploy_state is not None:
            state = deploy_state.to_json()
    runs: list[Run] = []
    with readers.runs(target.paths.runs) as store:
        if store is not None:
            runs = store.list(limit=deploys, kind="deploy")
    last_poll = None
    if state["last_poll_at"] is not None:
        last_poll = {"at": state["last_poll_at"], "outcome": "failed" if state["last_error"] else "ok",
                     "error": state["last_error"]}
    return {
        "app": target.name, "image": target.image.name, "container": target.container_name,
        "strategy": target.strategy, **state, "last_poll": last_poll,
        "deploys": [_deploy_json(target.name, run) for run in runs],
    }


def _deploy_json(app: str, run: Run) -> dict[str, Any]:
    data = run.to_json()
    data["log_url"] = f"/apps/{quote(app)}/runs/{run.number}/log" if run.log_path else None
    return data


def _app_section(item: dict[str, Any], *, link: bool) -> str:
    name = html.escape(item["app"])
    title = f'<a href="/apps/{quote(item["app"])}">{name}</a>' if link else name
    current, previous = item["current"], item["previous"]
    rows = [
        ("image", f"<code>{html.escape(item['image'])}</code> ({html.escape(item['strategy'])})"),
        ("running", _release(current)),
        ("previous", _release(previous)),
        ("quarantined", "<br>".join(
            f"<code>{html.escape(q['version'])}</code>: {html.escape(q['reason'])} (since {html.escape(q['since'])})"
            for q in item["quarantined"]
        ) or "nothing"),
        ("last poll", _last_poll(item["last_poll"])),
        ("next poll", html.escape(item["next_poll_at"] or "—")),
    ]
    if item["deploy_in_progress"] is not None:
        progress = item["deploy_in_progress"]
        what = f"<code>{html.escape(progress['version'])}</code> ({html.escape(progress['phase'])})"
        rows.append(("deploying", what))
    if link and item["deploys"]:
        last = item["deploys"][0]
        rows.append(("last deploy", _deploy_summary(last)))
    cells = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows)
    return f'<section class="app"><h2>{title}</h2><dl>{cells}</dl></section>'


def _release(release: dict[str, Any] | None) -> str:
    if release is None:
        return "nothing"
    return f"<code>{html.escape(release['version'])}</code> since {html.escape(release['deployed_at'] or '?')}"


def _last_poll(poll: dict[str, Any] | None) -> str:
    if poll is None:
        return "not yet"
    text = f"{html.escape(poll['at'])}: {html.escape(poll['outcome'])}"
    if poll["error"]:
        text += f' <span class="error">{html.escape(poll["error"])}</span>'
    return text


def _deploy_summary(run: dict[str, Any]) -> str:
    text = f"#{run['number']} {html.escape(run['status'])} <code>{html.escape(run['version'] or '')}</code>"
    if run["log_url"]:
        text += f' (<a href="{html.escape(run["log_url"])}">log</a>)'
    return text


def _deploys_table(app: str, deploys: list[dict[str, Any]]) -> str:
    if not deploys:
        return "<section><h2>deploys</h2><p>none yet</p></section>"
    rows = []
    for run in deploys:
        log = f'<a href="{html.escape(run["log_url"])}">log</a>' if run["log_url"] else ""
        rows.append(
            f'<tr class="deploy"><td>#{run["number"]}</td><td>{html.escape(run["status"])}</td>'
            f"<td><code>{html.escape(run['version'] or '')}</code></td><td>{html.escape(run['started_at'] or '')}</td>"
            f"<td>{html.escape(run['finished_at'] or '')}</td><td>{html.escape(run['error'] or '')}</td>"
            f"<td>{log}</td></tr>"
        )
    head = "<tr><th>#</th><th>status</th><th>version</th><th>started</th><th>finished</th><th>error</th><th></th></tr>"
    return f"<section><h2>deploys</h2><table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></section>"


def _log(target: AppTarget, readers: StateReaders, number: int) -> Answer:
    with readers.runs(target.paths.runs) as store:
        run = store.get(number) if store is not None else None
    if run is None or run.kind != "deploy" or not run.log_path:
        return Answer.text(404, f"not found: {target.name} has no deploy #{number} with a log")
    path = Path(run.log_path)
    log_dir = target.paths.log_dir.resolve()
    try:
        resolved = path.resolve()
        if not resolved.is_relative_to(log_dir):
            return Answer.text(404, f"not found: the log of deploy #{number} is not under the app's LOG_DIR")
        with resolved.open("rb") as log:
            size = log.seek(0, 2)
            log.seek(max(0, size - LOG_TAIL_BYTES))
            data = log.read()
    except OSError:
        return Answer.text(404, f"not found: the log of deploy #{number} is gone (pruned?)")
    return Answer(200, ANSI_ESCAPE.sub("", data.decode("utf-8", "replace")).encode(), headers=_HEADERS)


def _badge(target: AppTarget, readers: StateReaders) -> Answer:
    with readers.deploy_state(target.paths.state) as state:
        current = state.current if state is not None else None
    segments = [("deployed", "#555"), (current.version if current else "nothing", "#007ec6" if current else "#9f9f9f")]
    return Answer(200, svg_badge(segments).encode(), "image/svg+xml", headers=_HEADERS)


def _html(title: str, body: str) -> Answer:
    page = _PAGE.substitute(refresh=REFRESH_SECONDS, title=html.escape(title), style=_STYLE, body=body)
    return Answer(200, page.encode(), "text/html; charset=utf-8", headers=_HEADERS)


def _json(data: Any) -> Answer:
    return Answer(200, json.dumps(data, indent=2).encode() + b"\n", "application/json", headers=_HEADERS)


def _not_found(name: str) -> Answer:
    return Answer.text(404, f"not found: no app named {name!r}")
