"""The project's own error types, shared by both agents.

Every error a dependency raises (httpx, sqlite3, smtplib, docker, subprocess) is converted into one
of these at the module that talks to that dependency, with ``raise ... from exc``::

    PiCicdError                    base of everything the project raises on purpose
    ├── SettingsError              a missing or bad setting; the agent refuses to start (exit 2)
    ├── RegistryError              talking to a Docker Registry v2 / OCI registry failed
    │   ├── RegistryAuthError      credentials refused, or the token endpoint said no
    │   ├── RegistryNotFound       the repository, tag or manifest does not exist
    │   ├── RegistryLinkRefused    the registry pointed the client at another host (``host``)
    │   └── RegistryUnavailable    network error, timeout, 5xx: worth retrying later
    │       └── RateLimited        429 (carries ``retry_after`` when the registry said so)
    ├── StoreError                 the run history / state database cannot be read or written
    └── NotifyError                an email could not be sent (the notifier logs it, never raises)

Each agent adds its own subtree in ``ci_agent/errors.py`` and ``cd_agent/errors.py``.
``exit_code`` says how the command line reports the error, like click's ``ClickException``.
"""

from __future__ import annotations


class PiCicdError(Exception):
    """Base class of every error pi-cicd raises on purpose."""

    exit_code: int = 1


class SettingsError(PiCicdError):
    """A setting is missing or has a bad value; the message names the variable."""

    exit_code = 2


class RegistryError(PiCicdError):
    """A registry request failed."""


class RegistryAuthError(RegistryError):
    """The registry or its token endpoint refused the credentials."""


class RegistryNotFound(RegistryError):
    """The repository, tag or manifest does not exist in the registry."""


class RegistryLinkRefused(RegistryError):
    """The registry sent a page link (``Link: rel="next"``) to another origin; ``host`` is that host."""

    def __init__(self, message: str, *, host: str) -> None:
        super().__init__(message)
        self.host = host


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or answered 5xx; retrying later may help."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(RegistryUnavailable):
    """The registry answered 429 Too Many Requests."""


class StoreError(PiCicdError):
    """The run history or state database failed."""


class NotifyError(PiCicdError):
    """An email could not be sent."""
