"""The CI agent's public listener (DESIGN.md, "CI agent HTTP API"): the GitHub webhook, health and badge.

This app is what ``CI_HOST:CI_PORT`` serves, the port GitHub (and so the internet) reaches. Only
``POST /webhook``, ``GET /healthz`` and ``GET /badge.svg`` answer there without credentials; the
dashboard and the run API (ci_agent/dashboard.py) are on their own listener, and are added here
only when ``CI_DASHBOARD_TOKEN`` is set, behind that token.

The webhook only verifies, records and queues, so it answers in milliseconds; the worker runs the
pipeline later. Order of checks on ``POST /webhook``: size (413) → signature header present (401,
before a byte of the body is read) → body within bounds and signature (ci_agent/body.py: 503, 408,
413, 401) → event header and body (400) → ``ping`` → event / repository / deletion / branch filters →
de-duplication → queue (202). Nothing is recorded before the signature has been verified.

One webhook serves every repository of the agent (``CI_REPOS_FILE``). The body's HMAC is computed
under each distinct configured secret while it streams in, and the header must match one of them
before anything is parsed; then the payload's ``repository.full_name`` picks the repository among
those configured *with that secret*. So one secret may serve several repositories (a GitHub
organisation webhook) or each its own, and a delivery signed with repository A's secret that names
repository B is refused (403) and logged as a forgery: A's secret only speaks for A. A repository
that is not configured at all gets the answer it always got (403, "another repository").

GitHub can send deliveries as ``application/json`` or as ``application/x-www-form-urlencoded``
(``payload=<url-encoded JSON>``); both are accepted, and the signature is always over the raw body.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from loguru import logger
from pydantic import SecretStr

from ci_agent.answers import install_error_answers
from ci_agent.body import MAX_BODY_BYTES, BodyIntake
from ci_agent.dashboard import add_badge_route, create_dashboard_app
from ci_agent.errors import WebhookRejected
from ci_agent.payload import PushEvent, parse_push
from ci_agent.queue import RunQueue
from ci_agent.repos import LiveTargets
from ci_agent.settings import CiSettings
from ci_agent.signature import HEADER as SIGNATURE_HEADER
from ci_agent.targets import RepoTarget, RepoTargets, load_targets
from shared.runstore import RunStore

__all__ = ["MAX_BODY_BYTES", "create_app"]

_DELIVERY_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")
_FORM = "application/x-www-form-urlencoded"
_log = logger.bind(agent="ci", component="webhook")
_HINTS = 1024


def create_app(
    settings: CiSettings, store: RunStore, queue: RunQueue, targets: LiveTargets | None = None
) -> FastAPI:
    """The public app: ``ci-agent serve`` serves it on ``CI_HOST:CI_PORT``.

    ``targets``: the repositories in force (read on every delivery, so a reload applies at once);
    default: the environment's one repository.
    """
    live = targets if targets is not None else LiveTargets(load_targets(settings, {}))
    # No /docs or /openapi.json: the API is the table in DESIGN.md, nothing more is exposed.
    app = FastAPI(title="pi-cicd ci-agent", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_answers(app, "webhook")
    intake = BodyIntake(settings.state_dir / "spool")

    async def webhook(request: Request) -> JSONResponse:
        declared = _declared_length(request)
        keys = secret_keys(live.current)
        signature = _signature_header(keys, request)
        received = await intake.read(request.stream(), declared, keys.secrets if signature is not None else ())
        try:
            hook = request.headers.get("X-GitHub-Hook-ID")
            matched = received.matching(signature, keys.hints.get(hook or "")) if signature is not None else None
            if matched is not None and hook:
                keys.remember(hook, matched)
            candidates = keys.signed_by(matched)
            if signature is not None and candidates is None:
                raise WebhookRejected(
                    401, f"{SIGNATURE_HEADER} does not match the body and {keys.which}"
                )
            body = await received.content()
        finally:
            received.close()
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
        target = _pick(keys, candidates or [], event)
        reason = _ignore_reason(target, event)
        if reason is not None:
            return _ignored(reason)
        # Recorded here when nothing else holds the store (almost always: it is faster than a thread);
        # else in a thread, so the loop never waits for the worker. Either way, before the answer.
        submission = queue.accept_nowait(event, delivery_id, scope=target.name)
        if submission is None:
            submission = await run_in_threadpool(partial(queue.accept, scope=target.name), event, delivery_id)
        if submission.duplicate:
            answer: dict[str, object] = {"duplicate": True, "run": submission.run.number}
            if submission.reason is not None:
                answer["reason"] = submission.reason
            return JSONResponse(answer, status_code=200)
        return JSONResponse({"run": submission.run.number}, status_code=202)

    # A plain Starlette route: FastAPI's parameter and dependency machinery has nothing to do for a
    # handler that reads the request itself, and costs a part of every delivery's answer.
    app.add_route("/webhook", webhook, methods=["POST"], include_in_schema=False)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    add_badge_route(app, store, live)
    if settings.ci_dashboard_token is not None:
        # Last, so it only sees what the routes above do not answer; it asks for the token itself.
        app.mount("/", create_dashboard_app(settings, store, live))
    return app


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("Content-Length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise WebhookRejected(400, "bad Content-Length header")
    length = int(declared)
    if length > MAX_BODY_BYTES:
        raise WebhookRejected(413, f"body over {MAX_BODY_BYTES // (1024 * 1024)} MiB")
    return length


@dataclass(frozen=True)
class _SecretKeys:
    """The distinct webhook secrets of the repositories in force, and who holds each one."""

    targets: RepoTargets
    secrets: tuple[SecretStr, ...]
    holders: tuple[tuple[RepoTarget, ...], ...]
    unsigned: tuple[RepoTarget, ...]
    # X-GitHub-Hook-ID -> the secret that hook signed with last time: tried first next time (one HMAC
    # instead of one per secret). The header is not signed; a wrong guess only costs the other HMACs.
    hints: dict[str, int] = field(default_factory=dict)

    def remember(self, hook: str, index: int) -> None:
        if len(self.hints) >= _HINTS and hook not in self.hints:
            self.hints.clear()  # strangers can send any ids; a bounded map costs nothing to refill
        self.hints[hook] = index

    @classmethod
    def of(cls, targets: RepoTargets) -> _SecretKeys:
        by_value: dict[str, list[RepoTarget]] = {}
        secrets: dict[str, SecretStr] = {}
        for target in targets:
            if target.webhook_secret is not None:
                value = target.webhook_secret.get_secret_value()
                secrets.setdefault(value, target.webhook_secret)
                by_value.setdefault(value, []).append(target)
        return cls(
            targets,
            tuple(secrets.values()),
            tuple(tuple(by_value[value]) for value in secrets),
            tuple(target for target in targets if target.webhook_secret is None),
        )

    @property
    def which(self) -> str:
        return "the configured secret" if len(self.secrets) <= 1 else "any configured secret"

    def signed_by(self, index: int | None) -> list[RepoTarget] | None:
        """The repositories a delivery may be for: those of the matching secret, else the unsigned ones."""
        if index is not None:
            return list(self.holders[index])
        return list(self.unsigned) if self.unsigned else None


_keys_cache: list[tuple[RepoTargets, _SecretKeys]] = []


def secret_keys(targets: RepoTargets) -> _SecretKeys:
    """``_SecretKeys.of(targets)``, worked out once per configuration (each delivery asks)."""
    if _keys_cache and _keys_cache[0][0] is targets:
        return _keys_cache[0][1]
    keys = _SecretKeys.of(targets)
    _keys_cache[:] = [(targets, keys)]
    return keys


def _pick(keys: _SecretKeys, candidates: list[RepoTarget], event: PushEvent) -> RepoTarget:
    """The repository a verified push is for; 403 when the secret it was signed with is not that repository's."""
    named = [target for target in candidates if target.names_repository(event.repository)]
    if named:
        return named[0]
    if not keys.targets.from_file:
        # The environment's one repository: CI_GITHUB_REPO, when set, is checked as it always was.
        target = keys.targets.first
        if target.github_repo is not None:
            raise WebhookRejected(
                403, f"repository {event.repository!r} is not CI_GITHUB_REPO {target.github_repo!r}"
            )
        return target
    anonymous = [target for target in candidates if target.github_repo is None]
    if len(anonymous) == 1:
        return anonymous[0]  # a repos file of one table without github_repo takes any repository, as before
    elsewhere = [target for target in keys.targets if target.names_repository(event.repository)]
    if elsewhere:
        # Refused rather than ignored: A's secret speaks for A only, whoever holds it.
        _log.warning(
            "refused a delivery for repository {!r} ([repos.{}]) signed with the secret of {}: forged or misrouted",
            event.repository, elsewhere[0].name, ", ".join(f"[repos.{t.name}]" for t in candidates) or "no repository",
        )
        raise WebhookRejected(
            403, f"repository {event.repository!r} is not configured with the secret this delivery was signed with"
        )
    raise WebhookRejected(403, f"repository {event.repository!r} is not one of this agent's repositories")


def _signature_header(keys: _SecretKeys, request: Request) -> str | None:
    """The signature to check, or a 401 before the body is read; ``None`` when unsigned is allowed."""
    header = request.headers.get(SIGNATURE_HEADER)
    if not keys.secrets:
        return None  # CI_ALLOW_UNSIGNED=true and no secret configured: the user chose this
    if header is None and keys.unsigned:
        return None  # some repositories take unsigned deliveries (CI_ALLOW_UNSIGNED=true)
    if header is None:
        if request.headers.get("X-Hub-Signature") is not None:
            raise WebhookRejected(401, f"only {SIGNATURE_HEADER} (HMAC-SHA256) is accepted, not SHA-1 X-Hub-Signature")
        raise WebhookRejected(401, f"missing {SIGNATURE_HEADER} header")
    return header


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
    except RecursionError as exc:
        # The parser recurses per nesting level; GitHub's payloads are a few levels deep.
        raise WebhookRejected(400, "body is JSON nested too deeply") from exc


def _delivery_id(request: Request) -> str:
    delivery = request.headers.get("X-GitHub-Delivery")
    if delivery is None:
        # GitHub always sends it; without it a replayed body would skip the duplicate check.
        raise WebhookRejected(400, "missing X-GitHub-Delivery header")
    if not _DELIVERY_ID.fullmatch(delivery):
        raise WebhookRejected(400, "bad X-GitHub-Delivery header")
    return delivery


def _ignore_reason(target: RepoTarget, event: PushEvent) -> str | None:
    if event.deleted:
        return f"{event.ref} was deleted"
    if event.tag is not None:
        if event.release_version is None:
            return f"tag {event.tag!r} is not a release tag vX.Y.Z"
        return None
    if event.branch != target.branch:
        return f"branch {event.branch!r} is not the tracked branch {target.branch!r}"
    return None


def _ignored(reason: str) -> JSONResponse:
    return JSONResponse({"ignored": reason}, status_code=200)
