"""What may be shown of a notification URL (scheme and host name) and which parts of it are secret.

Kept apart from Apprise, which is imported only when ``NOTIFY_URLS`` is set, so settings and log
redaction can use it without that cost.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit


def describe_url(url: str) -> str:
    """``scheme://host`` of a notification URL, for messages: the host only when it is a host name.

    Many services put the secret where the host goes (``tgram://BOT_TOKEN/CHAT``, ``ntfy://TOPIC``,
    ``discord://WEBHOOK_ID/TOKEN``); a host name has a dot in it (or is ``localhost``), a token has none.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return "(not a URL: no scheme://)"
    try:
        host = urlsplit(f"x://{rest}").hostname or ""
    except ValueError:
        host = ""
    shown = host if ("." in host or host == "localhost") and len(host) < 64 else "…"
    return f"{scheme.lower()}://{shown}"


def url_secret_parts(url: str, *, minimum: int = 8) -> list[str]:
    """The parts of a notification URL that may be secret: user, password, a token-like host, path and query values.

    ``minimum`` drops shorter parts: the log redactor masks each part everywhere, and masking a short
    word such as ``json`` would mangle unrelated lines, while the tokens services use are long.
    """
    _, _, rest = url.strip().partition("://")
    try:
        parts = urlsplit(f"x://{rest}")
        user, password, host = parts.username, parts.password, parts.hostname
    except ValueError:
        return [rest] if len(rest) >= minimum else []
    candidates = [user or "", password or "", *parts.path.split("/"), *(v for _, v in parse_qsl(parts.query))]
    if host and describe_url(url).endswith("…"):
        # A token in the host's place may hold a colon (Telegram's ``BOT_ID:SECRET``), which urlsplit reads as a port.
        where = parts.netloc.rpartition("@")[2]
        candidates.extend([where, *where.split(":")])
    return [part for part in dict.fromkeys(candidates) if len(part) >= minimum]

