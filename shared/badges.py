"""Flat shields.io-style SVG badges (the CI agent's ``/badge.svg``, the CD agent's ``/badge/NAME.svg``).

Every text is escaped: a version or a status can never become markup.
"""

from __future__ import annotations

import html


def svg_badge(segments: list[tuple[str, str]]) -> str:
    """A badge of ``(text, colour)`` segments, left to right."""
    widths = [_text_width(text) + 12 for text, _ in segments]
    total = sum(widths)
    title = html.escape(" | ".join(text for text, _ in segments))
    rects, texts = [], []
    x = 0
    for (text, colour), width in zip(segments, widths, strict=True):
        escaped = html.escape(text)
        middle = x + width / 2
        rects.append(f'<rect x="{x}" width="{width}" height="20" fill="{colour}"/>')
        texts.append(
            f'<text x="{middle:g}" y="15" fill="#010101" fill-opacity=".3">{escaped}</text>'
            f'<text x="{middle:g}" y="14">{escaped}</text>'
        )
        x += width
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="{title}">'
        f"<title>{title}</title>"
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        '<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{total}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)">{"".join(rects)}<rect width="{total}" height="20" fill="url(#s)"/></g>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11">'
        f'{"".join(texts)}</g></svg>'
    )

def _text_width(text: str) -> int:
    # Verdana 11px averages about 7px a character; narrow dots and digits make this a safe upper bound.
    return 7 * len(text)
