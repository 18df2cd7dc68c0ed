"""shared.run_lifecycle: open a run (running, started, its own log file), finish it (end, email, pruning)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.notify import Email, Notifier
from shared.run_lifecycle import RunLifecycle, RunScope
from shared.runstore import RunStore
from shared.testing import RecordingMailer


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 7, 16, 28, 54, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def test_two_scopes_with_the_same_run_number_write_their_own_files(tmp_path: Path) -> None:
    mailer = RecordingMailer()
    notifier = Notifier(mailer, attempts=1)
    with RunStore(tmp_path / "web.db") as web_store, RunStore(tmp_path / "api.db") as api_store:
        web, api = RunLifecycle(web_store, notifier, Clock()), RunLifecycle(api_store, notifier, Clock())
        web_scope = RunScope("web", tmp_path / "logs" / "web", keep_logs=5)
        api_scope = RunScope("api", tmp_path / "logs" / "api", keep_logs=5)
        web_run = web_store.create(kind="deploy", scope="web")
        api_run = api_store.create(kind="deploy", scope="api")
        assert web_run.number == api_run.number == 1
        with web.open(web_run, web_scope, version="1.0.0") as one, api.open(api_run, api_scope) as other:
            one.log.info("web line")
            other.log.info("api line")
            assert one.run.status == "running" and one.run.version == "1.0.0"
            assert one.log_path == tmp_path / "logs" / "web" / "2026-12-07_16-28-55_run-0001.log"
        finished = web.finish(one.run, web_scope, status="failed", error="boom",
                              email=Email(subject="[web] run 1 failed", body="boom", kind="failure"))
        api.finish(other.run, api_scope, status="succeeded")
        assert (finished.status, finished.error, finished.log_path) == ("failed", "boom", str(one.log_path))
        assert finished.finished_at is not None and finished.started_at is not None
        assert "web line" in one.log_path.read_text() and "api line" not in one.log_path.read_text()
        assert "api line" in other.log_path.read_text() and "web line" not in other.log_path.read_text()
    notifier.close(timeout=5)
    assert [email.subject for email in mailer.sent] == ["[web] run 1 failed"]


def test_finish_prunes_only_its_scopes_logs(tmp_path: Path) -> None:
    notifier = Notifier(RecordingMailer(), attempts=1)
    with RunStore(tmp_path / "runs.db") as store:
        lifecycle = RunLifecycle(store, notifier, Clock())
        web = RunScope("web", tmp_path / "logs" / "web", keep_logs=2)
        api = RunScope("api", tmp_path / "logs" / "api", keep_logs=2)
        api_run = store.create(kind="ci", scope="api")
        with lifecycle.open(api_run, api):
            pass
        lifecycle.finish(api_run, api, status="succeeded")
        for _ in range(3):
            run = store.create(kind="ci", scope="web")
            with lifecycle.open(run, web):
                pass
            lifecycle.finish(run, web, status="succeeded")
        assert len(list(web.log_dir.iterdir())) == 2
        assert len(list(api.log_dir.iterdir())) == 1
    notifier.close(timeout=5)
