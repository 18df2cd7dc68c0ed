"""A token in an ``Authorization`` header: a Bearer token for scripts, a Basic password for browsers.

Both agents' private pages take their token this way (``CI_DASHBOARD_TOKEN``, ``CD_DASHBOARD_TOKEN``);
the comparison is in constant time, and nothing here logs or echoes what was presented.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from pydantic import SecretStr


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
