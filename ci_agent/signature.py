"""GitHub's webhook signature: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``.

Only the SHA-256 header counts. GitHub still sends the legacy SHA-1 ``X-Hub-Signature`` beside it,
but a delivery that carries only that one is refused: SHA-1 is not what we promised to check.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

HEADER = "X-Hub-Signature-256"
PREFIX = "sha256="


def sign(secret: SecretStr, body: bytes) -> str:
    """The header value GitHub would send for ``body``; tests and ``ci-agent`` tooling use it."""
    digest = hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
    return PREFIX + digest


def verify_signature(secret: SecretStr, body: bytes, header: str | None) -> bool:
    """True when ``header`` is the HMAC-SHA256 of the exact ``body`` bytes under ``secret``.

    Compared with ``hmac.compare_digest`` so the answer time says nothing about how much matched.
    """
    if not header or not header.startswith(PREFIX):
        return False
    expected = sign(secret, body)
    return hmac.compare_digest(expected.encode(), header.strip().lower().encode("ascii", "replace"))
