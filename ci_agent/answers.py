"""How the CI agent's HTTP listeners answer an error: one exception handler for every app.

Our own 4xx errors (and a deliberate 503 "busy") answer ``{"error": message}`` and log one line;
anything else answers a generic 500 and logs the traceback, since its text may name paths or values
that are no business of the caller.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from loguru import logger

from ci_agent.errors import CiError, WebhookRejected
from shared.errors import PiCicdError

# A flood of refusals (strangers probing the webhook) must not flood the console: this many lines per
# window, then one line saying how many were left out.
REFUSALS_LOGGED_PER_WINDOW = 20
REFUSAL_WINDOW_SECONDS = 60.0

# Refusals that may come before the body was read: closing saves reading (and discarding) the rest of it.
_CLOSE_AFTER = frozenset({401, 408, 413, 503})


def install_error_answers(app: FastAPI, component: str) -> None:
    log = logger.bind(agent="ci", component=component)
    refusals = _RefusalCounter()

    async def answer_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, CiError) and (exc.status_code < 500 or isinstance(exc, WebhookRejected)):
            left_out = refusals.count()
            if left_out is not None:
                if left_out:
                    log.warning("{} more refusals in the last minute were not logged", left_out)
                log.info("{} {} answered {}: {}", request.method, request.url.path, exc.status_code, exc)
            headers: dict[str, str] = dict(getattr(exc, "headers", {}))
            if isinstance(exc, WebhookRejected) and exc.status_code in _CLOSE_AFTER:
                headers["Connection"] = "close"
            return JSONResponse({"error": str(exc)}, status_code=exc.status_code, headers=headers)
        # Our own errors never carry secrets, but the details belong in the log, not in an answer.
        log.opt(exception=exc).error("{} {} failed: {}", request.method, request.url.path, exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the agent's log"}, status_code=500)

    app.add_exception_handler(PiCicdError, answer_error)


class _RefusalCounter:
    """Allows :data:`REFUSALS_LOGGED_PER_WINDOW` log lines per window."""

    def __init__(self) -> None:
        self.window_start = -REFUSAL_WINDOW_SECONDS
        self.logged = 0
        self.left_out = 0

    def count(self) -> int | None:
        """None: leave this refusal out of the log; else log it, after saying how many were left out before."""
        now = time.monotonic()
        if now - self.window_start >= REFUSAL_WINDOW_SECONDS:
            left_out = self.left_out
            self.window_start, self.logged, self.left_out = now, 1, 0
            return left_out
        if self.logged < REFUSALS_LOGGED_PER_WINDOW:
            self.logged += 1
            return 0
        self.left_out += 1
        return None
