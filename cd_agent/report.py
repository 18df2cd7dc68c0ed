"""What one deploy or rollback did (``DeployReport``), and the one function that writes its email.

The report is a plain value: the strategy fills it in, the deployer adds the run number and
duration, the command line prints it, the watcher reads its outcome, and :func:`render_email` turns
it into text without reaching back into Docker or the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shared.notify import Email

Outcome = Literal["deployed", "rolled_back", "failed", "noop"]
Action = Literal["deploy", "rollback"]
LOG_TAIL_LINES = 50


@dataclass(frozen=True)
class DeployReport:
    """What a deploy or rollback did.

    ``outcome``: ``deployed`` (``version`` runs and is healthy), ``rolled_back`` (``version`` was
    unhealthy; ``previous`` serves again), ``failed`` (nothing was swapped, or nothing could be
    restored: see ``error``), ``noop`` (``version`` already runs). ``downtime_s`` is measured from
    stopping the old container to the verdict (an upper bound of the outage).

    ``failed_step`` names the step that failed (``pull``, ``prepare``, ``rename``, ``create``,
    ``stop``, ``start``, ``health``); ``quarantined`` says whether the version was quarantined for it;
    ``health`` is the verdict's reason and ``health_output`` what the check saw last.
    """

    outcome: Outcome
    version: str
    previous: str | None
    error: str | None = None
    log_tail: str | None = None
    run: int | None = None
    duration_s: float = 0.0
    downtime_s: float | None = None
    failed_step: str | None = None
    quarantined: bool = False
    health: str | None = None
    health_output: str = ""
    digest: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.outcome in ("deployed", "noop")

    def to_json(self) -> dict[str, Any]:
        """What ``cd-agent deploy --json`` prints and the run history keeps."""
        return {
            "outcome": self.outcome, "version": self.version, "previous": self.previous, "error": self.error,
            "log_tail": self.log_tail, "run": self.run, "duration_s": self.duration_s, "downtime_s": self.downtime_s,
        }


def render_email(
    report: DeployReport, *, action: Action, app: str, image: str, container: str, log_path: Path
) -> Email:
    """The owner's email about ``report`` (a deploy or rollback of ``image`` as ``container``); the subject
    names the app first (``[web] deployed 1.4.0``), since one agent deploys many."""
    footer = f"\nRun {report.run}, {report.duration_s:.1f}s. Log: {log_path}\n"
    if report.outcome == "deployed":
        subject = f"deployed {report.version}" if action == "deploy" else f"rolled back to {report.version}"
        body = (
            f"{image}:{report.version} is running as {container}.\n"
            f"Previous version: {report.previous or 'none'}\n"
            f"Digest: {report.digest or 'unknown'}\nHealth: {report.health}\n"
        )
        return Email(subject=f"[{app}] {subject}", body=body + footer, kind="success")
    if report.outcome == "rolled_back":
        subject = f"deploy of {report.version} failed: rolled back to {report.previous}"
    else:
        subject = f"{action} of {report.version} failed"
    return Email(subject=f"[{app}] {subject}", body=_failure_body(report) + footer, kind="failure")


def _failure_body(report: DeployReport) -> str:
    if report.failed_step == "pull":
        return f"{report.error}"
    parts = [f"Failed at {report.failed_step}: {report.error}\n"]
    if report.quarantined:
        parts.append(
            "The version is quarantined: it is not tried again until a newer release appears "
            "(or `cd-agent deploy VERSION --force`).\n"
        )
    if report.health_output:
        parts.append(f"\nHealth check output:\n{report.health_output}\n")
    if report.log_tail:
        parts.append(f"\nLast {LOG_TAIL_LINES} lines of the new container's log:\n{report.log_tail}\n")
    return "".join(parts)
