"""Secrets: nothing the test session produced carries a configured secret.

The plugin (tests/support/reliability.py) moves this file to the very end of the session, so the scan
covers every test that ran before it: when the whole suite runs (``scripts/test``), the whole suite. On
xdist workers it runs in the exclusive phase, after every other worker has finished, and reads what they
registered and wrote (every worker's basetemp).
Scanned: every log file and captured agent output under pytest's basetemp, plus the emails and HTTP
answers tests handed to ``produced``. Secrets: those tests registered with ``secret``, plus the fixed
secrets other test modules configure their agents and servers with.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.reliability import (
    find_secrets,
    other_workers_registered,
    output_files,
    produced_texts,
    registered_secrets,
    session_output_root,
)

# After every other test, alone (on xdist, after every other worker has finished): see tests/support/parallel.py.
pytestmark = pytest.mark.exclusive("scans what every other test of the session produced")

# Secrets configured by test modules outside tests/reliability (agents, SMTP and registry servers).
SUITE_SECRETS = (
    "webhook-secret-Xy7-never-echoed",  # tests/integration/test_webhook.py
    "whsec-e2e-Q9v4-never-shown",  # tests/integration/test_ci_agent_e2e.py
    "smtp-e2e-P4ss-never-shown",  # tests/integration/test_ci_agent_e2e.py
    "correct-horse-battery",  # tests/integration/test_email_smtp.py
)


@pytest.mark.reliability(
    "every log file and agent output under this session's basetemp, every email and HTTP answer collected, "
    "scanned for every configured secret (webhook secrets, SMTP passwords, any registry password a test registers)",
    "zero hits",
)
def test_no_secret_in_anything_the_session_produced(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, observed: Callable[[str], None]
) -> None:
    others_secrets, others_texts = other_workers_registered(request.config)
    secrets = registered_secrets(request.config) | others_secrets | set(SUITE_SECRETS)
    files = list(output_files(session_output_root(request.config, tmp_path_factory.getbasetemp())))
    texts = produced_texts(request.config) + others_texts
    hits = find_secrets(secrets, files, texts)
    scanned = f"{len(files)} output files, {len(texts)} emails/answers"
    observed(f"{len(secrets)} secrets; {scanned} scanned; {len(hits)} hits")
    assert hits == []


@pytest.mark.reliability(
    "the scanner itself, given a log file, an email and an answer that each carry a registered secret",
    "all three found (the scan can fail), the secret itself never printed",
)
def test_the_scan_finds_a_planted_secret(tmp_path: Path, observed: Callable[[str], None]) -> None:
    planted = "planted-secret-for-the-scanner-only"
    (tmp_path / "run.log").write_text(f"password={planted}\n")
    (tmp_path / "ci_agent.out").write_text("nothing here\n")
    (tmp_path / ".env").write_text(f"SMTP_PASSWORD={planted}\n")  # an input, not output: not scanned
    hits = find_secrets([planted], output_files(tmp_path), [("email", f"x {planted}"), ("answer", planted)])
    (tmp_path / "run.log").unlink()
    (tmp_path / ".env").unlink()
    observed(f"{len(hits)} hits: {hits[0].rsplit('/', 1)[-1]}, {hits[1]}, {hits[2]}")
    assert len(hits) == 3
    assert all(planted not in hit for hit in hits)
