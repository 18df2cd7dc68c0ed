"""Who may read the dashboard and the run API: anyone who can reach its listener, or only token holders.

With ``CI_DASHBOARD_TOKEN`` set, every private page and run API answer needs the token, whatever the
listener: scripts send ``Authorization: Bearer <token>``, browsers get a Basic prompt and take the
token as the password (any user name). There is no check on the client's address: behind a tunnel
every request comes from 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from pydantic import SecretStr

from ci_agent.errors import CiError
from shared.access_tokens import presented_token, token_matches

__all__ = ["CHALLENGE", "DashboardLocked", "dashboard_guard", "presented_token", "token_matches"]

REALM = "pi-cicd ci-agent"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'


class DashboardLocked(CiError):
    """401: the dashboard needs ``CI_DASHBOARD_TOKEN`` and the request did not carry it."""

    status_code = 401
    # A browser shows its password prompt on this challenge.
    headers = {"WWW-Authenticate": CHALLENGE}


def dashboard_guard(token: SecretStr | None) -> Callable[[Request], None]:
    """A FastAPI dependency: passes when no token is configured or the request carries it."""

    def require_token(request: Request) -> None:
        if token is not None and not token_matches(token, request.headers.get("Authorization")):
            # The header (which may hold a wrong guess at the token) is never logged or echoed.
            raise DashboardLocked("the dashboard needs CI_DASHBOARD_TOKEN (Authorization: Bearer or Basic)")

    return require_token
