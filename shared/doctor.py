"""``doctor``: checks of a real set-up, one finding per check, shared by ``ci-agent doctor`` and ``cd-agent doctor``.

A check is a small function over an effect the agents already have (the Docker gateway, the
``RegistryClient``, the disk reading, a clock) that returns one :class:`Finding`: ``ok``, ``warn`` (works,
but worth a look) or ``FAIL`` (the agent will not work until it is fixed), what was seen, and what to do.
The effects raise the project's own errors (``shared.errors``); :func:`checked` is the one boundary where
an error becomes a ``FAIL`` finding, so a check never stops the ones after it. Each agent's own list of
checks is in ``ci_agent/doctor.py`` and ``cd_agent/doctor.py``; this module has the ones both run and
the report (text lines, ``--json``, exit code).

Exit codes follow the command lines' convention (``shared/errors.py``): 0 everything ready (warnings
allowed), 1 a check failed, 2 the settings are invalid (then only what needs no settings is checked).
No secret is printed: every line goes through the log redactor with every secret the settings hold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Literal

from shared.disk import PRUNE_HINT, DiskReading, FreeSpace, format_size
from shared.errors import PiCicdError, RegistryAuthError, RegistryNotFound, RegistryUnavailable, SettingsError
from shared.logs import redact
from shared.registry import DOCKER_HUB, ImageRef, RegistryClient
from shared.settings import SharedSettings

Level = Literal["ok", "warn", "FAIL"]
EXIT_READY, EXIT_FAILED, EXIT_SETTINGS = 0, 1, 2
# The registry's Date header has a resolution of one second and comes after a round trip: a clock this far
# from it is off. TLS certificates and registry tokens (a few minutes of life) fail well beyond it.
CLOCK_SKEW_WARN = 30.0
# Environment variables whose values are secrets even when the settings could not be read.
_SECRET_SUFFIXES = ("_PASSWORD", "_TOKEN", "_SECRET", "NOTIFY_URLS")


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``check`` names it (``registry [web]``), ``detail`` what was seen, ``fix`` what to do."""

    check: str
    level: Level
    detail: str
    fix: str = ""


def ok(check: str, detail: str) -> Finding:
    return Finding(check, "ok", detail)


def warn(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "warn", detail, fix)


def fail(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "FAIL", detail, fix)


def checked(check: str, run: Callable[[], Finding], fix: Callable[[PiCicdError], str]) -> Finding:
    """``run()``'s finding, or a ``FAIL`` naming the error when its effect raised one: the one boundary.

    ``fix`` says what to do about that error. Anything else an effect lets through (a bug, a library error
    an adapter did not convert) is a ``FAIL`` too, named by its type, so one check never hides the others.
    """
    try:
        return run()
    except PiCicdError as exc:
        return fail(check, str(exc), fix(exc))
    except Exception as exc:  # the report goes on; the type names what an adapter did not convert
        return fail(check, f"unexpected {type(exc).__name__}: {exc}", "report this as a bug of pi-cicd doctor")


@dataclass
class Report:
    """The findings in the order they were made, and the secrets no line may show."""

    findings: list[Finding] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def add(self, finding: Finding) -> Finding:
        self.findings.append(finding)
        return finding

    @property
    def exit_code(self) -> int:
        if any(f.level == "FAIL" and f.check == SETTINGS for f in self.findings):
            return EXIT_SETTINGS
        return EXIT_FAILED if any(f.level == "FAIL" for f in self.findings) else EXIT_READY

    def text(self) -> str:
        """One line per check: ``ok    docker: Docker 27.5.1 (linux/amd64)``; a problem adds ``-> what to do``."""
        lines = []
        for finding in self.findings:
            line = f"{finding.level:<5} {finding.check}: {finding.detail}"
            if finding.fix:
                line += f" -> {finding.fix}"
            lines.append(redact(line, self.secrets))
        failed = sum(f.level == "FAIL" for f in self.findings)
        warned = sum(f.level == "warn" for f in self.findings)
        if failed:
            lines.append(f"{failed} check(s) failed, {warned} warning(s): not ready")
        else:
            lines.append(f"ready ({len(self.findings)} checks, {warned} warning(s))")
        return "\n".join(lines) + "\n"

    def json(self) -> str:
        data = {
            "ready": self.exit_code == EXIT_READY,
            "exit_code": self.exit_code,
            "checks": [asdict(finding) for finding in self.findings],
        }
        return redact(json.dumps(data, indent=2), self.secrets) + "\n"


def run_doctor(
    agent: str, environ: Mapping[str, str], diagnose: Callable[[Mapping[str, str]], Report], *, as_json: bool
) -> int:
    """``AGENT doctor``: the findings on stdout (lines or JSON), the exit code returned. ``environ`` is what
    ``read_environment`` gave; a bad setting is one finding among the others, not an early exit."""
    from shared.logs import configure_logging

    # The findings say what went wrong; the effects' own log lines would only repeat it.
    configure_logging(agent, environment_secrets(environ), level="ERROR")
    report = diagnose(environ)
    print(report.json() if as_json else report.text(), end="")
    return report.exit_code


def environment_secrets(environ: Mapping[str, str]) -> list[str]:
    """Values of secret-looking variables: what is masked when the settings (and their secret list) failed."""
    return [value for key, value in environ.items() if key.upper().endswith(_SECRET_SUFFIXES) and len(value) >= 4]


# -- the checks both agents run ------------------------------------------------------------------------

SETTINGS = "settings"


def settings_finding(load: Callable[[], str]) -> Finding:
    """``load()`` reads and validates the settings as the agent's start-up does and describes them."""

    def fix(exc: PiCicdError) -> str:
        return "correct the setting the message names (environment or --env-file), then run doctor again"

    return checked(SETTINGS, lambda: ok(SETTINGS, load()), fix)


def docker_finding(check: str, version: Callable[[], str], where: str) -> Finding:
    """The engine answers; ``version()`` is its ``Docker 27.5.1, linux/amd64``. ``where`` says which setting
    names it (``DOCKER_HOST``, ``CI_BUILD_DOCKER_HOST``), for the fix."""
    return checked(
        check, lambda: ok(check, version()),
        lambda exc: f"start dockerd (systemctl start docker), or correct {where}; the agent's user must be "
        "able to use its socket (the docker group)",
    )


def disk_finding(minimum: int, free_space: FreeSpace, check: str = "disk") -> Finding:
    """``DISK_MIN_FREE`` against the free space where the engine keeps its data."""

    def run() -> Finding:
        if minimum <= 0:
            return warn(check, "DISK_MIN_FREE=0: runs and deploys start however full the disk is",
                        "set DISK_MIN_FREE (default 2GB) so a full SD card stops a run before it breaks layers")
        reading = free_space()
        if not isinstance(reading, DiskReading):
            return warn(check, f"not checked: {reading}", "see docs/operations/doctor.md#disk")
        text = f"{format_size(reading.free)} free where Docker keeps its data ({reading.path})"
        if reading.free < minimum:
            return fail(check, f"only {text}, below DISK_MIN_FREE={format_size(minimum)}", PRUNE_HINT)
        return ok(check, f"{text}, DISK_MIN_FREE={format_size(minimum)}")

    return checked(check, run, lambda exc: "see the Docker check above")


def email_finding(settings: SharedSettings) -> Finding:
    """With ``SMTP_HOST`` set, the mail server takes the connection, TLS and login a failure email needs
    (``NOOP`` then ``QUIT``: nothing is sent)."""
    from shared.notify import smtp_mailer

    check = "email"
    if settings.smtp_host is None:
        return ok(check, "email is off (SMTP_HOST is not set)")

    def run() -> Finding:
        mailer = smtp_mailer(settings)
        if mailer is None:  # pragma: no cover - smtp_host is set
            return ok(check, "email is off")
        mailer.check_login()
        who = f"the login of {mailer.username!r}" if mailer.username else "mail without a login"
        return ok(check, f"{mailer.host}:{mailer.port} ({mailer.security}) takes {who}; failures are mailed to "
                  f"{', '.join(mailer.recipients)}")

    def fix(exc: PiCicdError) -> str:
        if isinstance(exc, SettingsError):
            return "set NOTIFY_FROM and NOTIFY_TO, or unset SMTP_HOST to turn email off"
        return ("check SMTP_HOST, SMTP_PORT and SMTP_SECURITY (587 starttls, 465 ssl), SMTP_USERNAME and "
                "SMTP_PASSWORD (many providers want an app password)")

    return checked(check, run, fix)


def clock_finding(
    registry: str, server_date: Callable[[], datetime | None], now: Callable[[], float] = time.time,
    bound: float = CLOCK_SKEW_WARN,
) -> Finding:
    """This machine's clock against the registry's HTTP ``Date``: TLS and registry tokens depend on it."""
    check = f"clock [{registry}]"

    def run() -> Finding:
        before = now()
        date = server_date()
        after = now()
        if date is None:
            return warn(check, f"registry {registry} sent no Date header: the clock was not compared",
                        "check the time with `timedatectl` (NTP synchronized: yes)")
        skew = (before + after) / 2 - date.timestamp()
        text = f"{abs(skew):.0f}s {'ahead of' if skew > 0 else 'behind'} registry {registry}'s clock"
        if abs(skew) > bound:
            return warn(check, text, "turn on time sync: `timedatectl set-ntp true` (systemd-timesyncd); a Pi "
                        "has no real-time clock and starts from the last saved time")
        return ok(check, f"in sync with registry {registry} (within {bound:g}s)")

    finding = checked(check, run, lambda exc: "")
    if finding.level == "FAIL":  # no answer to compare with: the registry's own check says why
        return warn(check, f"not compared: {finding.detail}", "see the registry check above")
    return finding


def registry_fix(ref: ImageRef, *, login: str, push: bool) -> Callable[[PiCicdError], str]:
    """What to do about a registry error, by its type; ``login`` names the settings of the credentials."""

    def fix(exc: PiCicdError) -> str:
        if isinstance(exc, RegistryAuthError):
            right = "push to" if push else "pull from"
            hub = (" Docker Hub answers the same for a repository that does not exist: check the name too."
                   if ref.registry == DOCKER_HUB else "")
            return (f"check {login} (a token that may {right} {ref.repository}; `docker login {ref.registry}` "
                    f"with the same values tells the same).{hub}")
        if isinstance(exc, RegistryNotFound):
            return f"check the image name {ref.name} (registry host, owner and repository)"
        if isinstance(exc, RegistryUnavailable):
            return f"check that {ref.registry} is reachable from this machine (DNS, firewall, proxy) and try again"
        return "see docs/operations/doctor.md (registry)"

    return fix


def dedupe(items: Iterable[str]) -> Sequence[str]:
    """Items in first-seen order, each once (engines, registries shared by several repos or apps)."""
    return list(dict.fromkeys(items))


def open_client(ref: ImageRef, username: str | None, password: object) -> RegistryClient:
    """A ``RegistryClient`` with a short timeout: doctor waits seconds, not the watcher's minutes."""
    from pydantic import SecretStr

    return RegistryClient(
        ref, username=username, password=password if isinstance(password, SecretStr) else None, timeout=10.0
    )
