"""Who may read the dashboard and the run API: anyone who can reach its listener, or only token holders.

With ``CI_DASHBOARD_TOKEN`` set, every private page and run API answer needs the token, whatever the
listener: scripts send ``Authorization: Bearer <token>``, browsers get a Basic prompt and take the
token as the password (any user name). There is no check on the client's address: behind a tunnel
every request comes from 127.0.0.1.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable

from fastapi import Request
from pydantic import SecretStr

from ci_agent.errors import CiError

REALM = "pi-cicd ci-agent"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'


class DashboardLocked(CiError):
    """401: the dashboard needs ``CI_DASHBOARD_TOKEN`` and the request did not carry it."""

    status_code = 401
    # A browser shows its password prompt on this challenge.
    headers = {"WWW-Authenticate": CHALLENGE}


def presented_token(authorization: str | None) -> str | None:
    """The token an ``Authorization`` header carries: a Bearer token, or a Basic password."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, sep, password = decoded.partition(":")
        return password if sep else None
    return None


def token_matches(token: SecretStr, authorization: str | None) -> bool:
    """Whether ``authorization`` carries ``token``; compared in constant time."""
    presented = presented_token(authorization)
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), token.get_secret_value().encode("utf-8"))


def dashboard_guard(token: SecretStr | None) -> Callable[[Request], None]:
    """A FastAPI dependency: passes when no token is configured or the request carries it."""

    def require_token(request: Request) -> None:
        if token is not None and not token_matches(token, request.headers.get("Authorization")):
            # The header (which may hold a wrong guess at the token) is never logged or echoed.
            raise DashboardLocked("the dashboard needs CI_DASHBOARD_TOKEN (Authorization: Bearer or Basic)")

    return require_token
