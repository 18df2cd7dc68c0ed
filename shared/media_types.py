"""Content negotiation for both agents' pages: JSON for API clients, HTML for browsers (``Accept``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Both agents' pages need nothing but their own inline style sheet; a stored value that slipped past
# escaping could still not load or run anything.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Colour codes in run logs: stripped before a log is shown.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

def prefers_html(accept: str | None) -> bool:
    """Whether ``accept`` ranks ``text/html`` strictly above ``application/json`` (RFC 9110 q-values).

    A browser's ``text/html,...,*/*;q=0.8`` does; ``*/*``, ``application/json``, no header and a
    tie do not, so every API client keeps getting JSON.
    """
    if not accept:
        return False
    ranges = list(_media_ranges(accept))
    return _quality(ranges, "text", "html") > _quality(ranges, "application", "json")


def _media_ranges(accept: str) -> Iterable[tuple[str, str, float]]:
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        kind, _, subtype = media.lower().partition("/")
        if not kind or not subtype:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        yield kind, subtype, quality


def _quality(ranges: Sequence[tuple[str, str, float]], kind: str, subtype: str) -> float:
    # The most specific matching range decides (type/subtype over type/* over */*).
    best: tuple[int, float] = (-1, 0.0)
    for range_kind, range_subtype, quality in ranges:
        if (range_kind, range_subtype) == (kind, subtype):
            specificity = 2
        elif (range_kind, range_subtype) == (kind, "*"):
            specificity = 1
        elif (range_kind, range_subtype) == ("*", "*"):
            specificity = 0
        else:
            continue
        if specificity > best[0]:
            best = (specificity, quality)
    return best[1]
