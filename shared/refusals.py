"""How many refusals a listener logs: a flood of strangers must not flood the console.

:class:`RefusalCounter` lets :data:`REFUSALS_LOGGED_PER_WINDOW` lines through per window; after the
window, the next refusal first says how many were left out. Used by the CI agent's error answers
(ci_agent/answers.py) and by the host check of private pages (shared/host_check.py).
"""

from __future__ import annotations

import time

REFUSALS_LOGGED_PER_WINDOW = 20
REFUSAL_WINDOW_SECONDS = 60.0


class RefusalCounter:
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
