"""How the CI agent's HTTP listeners answer an error: one exception handler for every app.

Our own 4xx errors (and a deliberate 503 "busy") answer ``{"error": message}`` and log one line;
anything else answers a generic 500 and logs the traceback, since its text may name paths or values
that are no business of the caller.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from loguru import logger

from ci_agent.errors import CiError, WebhookRejected
from shared.errors import PiCicdError
from shared.refusals import RefusalCounter

# Refusals that may come before the body was read: closing saves reading (and discarding) the rest of it.
_CLOSE_AFTER = frozenset({401, 408, 413, 503})


def install_error_answers(app: FastAPI, component: str) -> None:
    log = logger.bind(agent="ci", component=component)
    refusals = RefusalCounter()

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
