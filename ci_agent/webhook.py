"""The CI agent's HTTP API (DESIGN.md, "CI agent HTTP API"): the GitHub webhook and the run history.

The webhook only verifies, records and queues, so it answers in milliseconds; the worker runs the
pipeline later. Order of checks on ``POST /webhook``: size (413) → signature (401) → event header and
body (400) → ``ping`` → event / repository / deletion / branch filters → de-duplication → queue (202).
Nothing is recorded before the signature has been verified.

GitHub can send deliveries as ``application/json`` or as ``application/x-www-form-urlencoded``
(``payload=<url-encoded JSON>``); both are accepted, and the signature is always over the raw body.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from loguru import logger

from ci_agent.dashboard import add_dashboard_routes, html_response, prefers_html, read_log, render_run_page
from ci_agent.errors import CiError, RunNotFound, WebhookRejected
from ci_agent.payload import PushEvent, parse_push
from ci_agent.queue import RunQueue
from ci_agent.settings import CiSettings
from ci_agent.signature import HEADER as SIGNATURE_HEADER
from ci_agent.signature import verify_signature
from shared.errors import PiCicdError
from shared.runstore import Run, RunStore

MAX_BODY_BYTES = 25 * 1024 * 1024
_DELIVERY_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")
_FORM = "application/x-www-form-urlencoded"


def create_app(settings: CiSettings, store: RunStore, queue: RunQueue) -> FastAPI:
    """The FastAPI application; ``ci-agent serve`` runs it with uvicorn."""
    # No /docs or /openapi.json: the API is the table in DESIGN.md, nothing more is exposed.
    app = FastAPI(title="pi-cicd ci-agent", docs_url=None, redoc_url=None, openapi_url=None)
    log = logger.bind(agent="ci", component="webhook")

    async def answer_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, CiError) and exc.status_code < 500:
            log.info("{} {} answered {}: {}", request.method, request.url.path, exc.status_code, exc)
            return JSONResponse({"error": str(exc)}, status_code=exc.status_code)
        # Our own errors never carry secrets, but the details belong in the log, not in an answer.
        log.opt(exception=exc).error("{} {} failed: {}", request.method, request.url.path, exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the agent's log"}, status_code=500)

    app.add_exception_handler(PiCicdError, answer_error)

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        body = await _read_capped(request)
        _check_signature(settings, request, body)
        event_name = request.headers.get("X-GitHub-Event")
        if not event_name:
            raise WebhookRejected(400, "missing X-GitHub-Event header")
        data = _decode(body, request.headers.get("Content-Type", ""))
        delivery_id = _delivery_id(request)
        if event_name == "ping":
            return JSONResponse({"ping": "ok"}, status_code=200)
        if event_name != "push":
            return _ignored(f"event {event_name!r} is not a push")
        event = parse_push(data)
        reason = _ignore_reason(settings, event)
        if reason is not None:
            return _ignored(reason)
        submission = await run_in_threadpool(queue.accept, event, delivery_id)
        if submission.duplicate:
            return JSONResponse({"duplicate": True, "run": submission.run.number}, status_code=200)
        return JSONResponse({"run": submission.run.number}, status_code=202)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/runs")
    def runs(limit: int = Query(default=50, ge=1, le=1000)) -> list[dict[str, Any]]:
        return [run.to_json() for run in store.list(limit=limit)]

    @app.get("/runs/{number}", response_model=None)
    def one_run(number: int, request: Request) -> dict[str, Any] | Response:
        run = _existing(store, number)
        # JSON unless a browser asks for HTML (dashboard.prefers_html): API clients see no change.
        if prefers_html(request.headers.get("Accept")):
            return html_response(render_run_page(settings, run, read_log(run)))
        return run.to_json()

    @app.get("/runs/{number}/log")
    def run_log(number: int) -> FileResponse:
        run = _existing(store, number)
        if run.log_path is None:
            raise RunNotFound(f"run {number} has no log yet")
        path = Path(run.log_path)
        if not path.is_file():
            raise RunNotFound(f"the log of run {number} is gone (pruned or moved)")
        # nosniff: a log holds text from the repository; a browser must never render it as HTML.
        return FileResponse(path, media_type="text/plain; charset=utf-8", headers={"X-Content-Type-Options": "nosniff"})

    add_dashboard_routes(app, settings, store)
    return app


async def _read_capped(request: Request) -> bytes:
    declared = request.headers.get("Content-Length")
    if declared is not None:
        if not declared.isdigit():
            raise WebhookRejected(400, "bad Content-Length header")
        if int(declared) > MAX_BODY_BYTES:
            raise WebhookRejected(413, f"body over {MAX_BODY_BYTES // (1024 * 1024)} MiB")
    chunks = []
    size = 0
    # Counted while streaming too: a chunked body has no Content-Length to check up front.
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise WebhookRejected(413, f"body over {MAX_BODY_BYTES // (1024 * 1024)} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_signature(settings: CiSettings, request: Request, body: bytes) -> None:
    secret = settings.ci_webhook_secret
    if secret is None:
        return  # CI_ALLOW_UNSIGNED=true and no secret configured: the user chose this
    header = request.headers.get(SIGNATURE_HEADER)
    if header is None:
        if request.headers.get("X-Hub-Signature") is not None:
            raise WebhookRejected(401, f"only {SIGNATURE_HEADER} (HMAC-SHA256) is accepted, not SHA-1 X-Hub-Signature")
        raise WebhookRejected(401, f"missing {SIGNATURE_HEADER} header")
    if not verify_signature(secret, body, header):
        raise WebhookRejected(401, f"{SIGNATURE_HEADER} does not match the body and the configured secret")


def _decode(body: bytes, content_type: str) -> object:
    media_type = content_type.split(";", 1)[0].strip().lower()
    try:
        # JSON on the wire is UTF-8 (RFC 8259); json.loads would also guess UTF-16/32 from bytes.
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookRejected(400, "body is not JSON (not UTF-8)") from exc
    if media_type == _FORM:
        try:
            fields = parse_qs(text, strict_parsing=True, max_num_fields=10)
        except ValueError as exc:
            raise WebhookRejected(400, "form-encoded body is not valid") from exc
        values = fields.get("payload")
        if not values or len(values) != 1:
            raise WebhookRejected(400, "form-encoded body has no single 'payload' field")
        text = values[0]
    try:
        return json.loads(text)
    except ValueError as exc:
        raise WebhookRejected(400, "body is not JSON") from exc


def _delivery_id(request: Request) -> str:
    delivery = request.headers.get("X-GitHub-Delivery")
    if delivery is None:
        # GitHub always sends it; without it a replayed body would skip the duplicate check.
        raise WebhookRejected(400, "missing X-GitHub-Delivery header")
    if not _DELIVERY_ID.fullmatch(delivery):
        raise WebhookRejected(400, "bad X-GitHub-Delivery header")
    return delivery


def _ignore_reason(settings: CiSettings, event: PushEvent) -> str | None:
    expected = settings.ci_github_repo
    if expected is not None and event.repository.lower() != expected.lower():
        # Refused rather than ignored: a signed delivery for another repository means a shared secret.
        raise WebhookRejected(403, f"repository {event.repository!r} is not CI_GITHUB_REPO {expected!r}")
    if event.deleted:
        return f"{event.ref} was deleted"
    if event.tag is not None:
        if event.release_version is None:
            return f"tag {event.tag!r} is not a release tag vX.Y.Z"
        return None
    if event.branch != settings.ci_branch:
        return f"branch {event.branch!r} is not the tracked branch {settings.ci_branch!r}"
    return None


def _ignored(reason: str) -> JSONResponse:
    return JSONResponse({"ignored": reason}, status_code=200)


def _existing(store: RunStore, number: int) -> Run:
    run = store.get(number)
    if run is None:
        raise RunNotFound(f"run {number} not found")
    return run
