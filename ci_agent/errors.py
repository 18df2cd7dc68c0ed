"""The CI agent's own error types, under ``shared.errors.PiCicdError``::

    PiCicdError (shared/errors.py)
    └── CiError                    base of everything the CI agent raises on purpose
        ├── WebhookRejected        a delivery the webhook refuses; carries the HTTP status to answer
        ├── RunNotFound            ``GET /runs/{n}`` or its log asked for something that does not exist (404)
        ├── StepFailed             a pipeline step (checkout, test, build, push) failed; the run ends ``failed``
        │   └── TestsFailed        the test command ran and exited non-zero (remembered: ci_agent/failed_tests.py)
        └── CommitStatusFailed     GitHub did not take a commit status; never changes a run's outcome

Errors carry how they are reported, like ``exit_code`` in shared/errors.py: ``status_code`` is the
HTTP answer the one exception handler in ``ci_agent/webhook.py`` gives (``{"error": message}``; 500
and a generic message for anything without a 4xx status); ``StepFailed.step`` becomes the run's
``failed_step`` and the subject of the failure email.
"""

from __future__ import annotations

from typing import Literal

from shared.errors import PiCicdError

Step = Literal["disk", "checkout", "test", "build", "push"]


class CiError(PiCicdError):
    """Base class of every error the CI agent raises on purpose."""

    status_code: int = 500


class WebhookRejected(CiError):
    """The webhook refuses a delivery; ``status_code`` is what GitHub gets, ``reason`` the body's error text.

    ``reason`` is sent to the caller, so it must never contain a secret.
    """

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason

    def __repr__(self) -> str:
        return f"WebhookRejected(status_code={self.status_code}, reason={self.reason!r})"


class RunNotFound(CiError):
    """A run, or its log file, does not exist."""

    status_code = 404


class StepFailed(CiError):
    """A pipeline step failed; nothing after it runs."""

    def __init__(self, step: Step, message: str) -> None:
        super().__init__(f"{step} failed: {message}")
        self.step: Step = step
        self.message = message

    def __repr__(self) -> str:
        return f"StepFailed(step={self.step!r}, message={self.message!r})"


class TestsFailed(StepFailed):
    """The test command ran and failed: the outcome of the commit under these settings, not an accident."""

    def __init__(self, message: str) -> None:
        super().__init__("test", message)


class CommitStatusFailed(CiError):
    """GitHub's statuses API did not take a status; ``permanent`` when sending it again cannot help.

    ``retry_after`` (seconds) is what GitHub asked us to wait (``Retry-After`` or the rate-limit reset).
    The message never contains the token.
    """

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
