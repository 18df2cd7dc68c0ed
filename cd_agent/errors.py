"""The CD agent's own error types, under ``shared.errors.PiCicdError``::

    PiCicdError (shared/errors.py)
    ├── SettingsError              a bad CD_* variable: the agent refuses to start         exit 2
    └── CdError                    base of everything the CD agent raises on purpose       exit 1
        ├── DeployError            a deploy failed; it was rolled back, or could not be    exit 1
        ├── DockerUnavailable      the Docker Engine cannot be reached (socket, stream)    exit 3
        ├── EngineError            the engine answered but refused a call (HTTP 4xx/5xx)   exit 1
        ├── NothingToDeploy        no release to deploy / no previous version to roll to   exit 4
        ├── ProxyError             the blue-green proxy cannot be set up or reconfigured   exit 1
        └── StateError             the deploy state under STATE_DIR is unreadable          exit 5

Registry errors (``RegistryUnavailable``, ``RateLimited``, ``RegistryAuthError``) come from
``shared.errors`` unchanged. Errors carry how they are reported: ``cd_agent/cli.py`` catches
``PiCicdError`` once, prints the message to stderr and exits with ``exit_code``, like click's
``ClickException``. The watcher never lets any of them end its loop.
"""

from __future__ import annotations

from shared.errors import PiCicdError


class CdError(PiCicdError):
    """Base class of every error the CD agent raises on purpose."""


class DeployError(CdError):
    """A deploy failed. ``version`` is the release that was tried, when known."""

    def __init__(self, message: str, *, version: str | None = None) -> None:
        super().__init__(message)
        self.version = version

    def __repr__(self) -> str:
        return f"DeployError({str(self)!r}, version={self.version!r})"


class DockerUnavailable(CdError):
    """The Docker Engine could not be reached: worth trying again later, nothing about the release."""

    exit_code = 3


class EngineError(CdError):
    """The engine was reached and refused a call (``status``: its HTTP status, e.g. 404 for a container
    that is gone, 409 for a name in use, 500 for a host port already allocated)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    def __repr__(self) -> str:
        return f"EngineError({str(self)!r}, status={self.status!r})"


class NothingToDeploy(CdError):
    """There is no release to deploy (or no previous version to roll back to)."""

    exit_code = 4


class ProxyError(CdError):
    """The blue-green proxy cannot be set up or reconfigured (bad ports, a foreign container in the way,
    Caddy refusing its configuration)."""


class StateError(CdError):
    """The deploy state database under STATE_DIR cannot be read or written."""

    exit_code = 5
