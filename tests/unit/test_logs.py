from __future__ import annotations

import io
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from loguru import logger

from shared.logs import configure_logging, prune_run_logs, redact, run_log, run_log_path, tail
from shared.testing import capture_logs

SECRET = "hunter2-s3cr3t-token"


@pytest.fixture(autouse=True)
def _reset_logging():
    """Each test starts without a console sink or secrets, and leaves none behind."""
    configure_logging("test", [], console=None)
    yield
    configure_logging("test", [], console=None)


@pytest.mark.parametrize(
    ("started_at", "number", "name"),
    [
        (datetime(2024, 3, 5, 7, 8, 9, tzinfo=UTC), 1, "2024-03-05_07-08-09_run-0001.log"),
        (datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), 42, "2024-12-31_23-59-59_run-0042.log"),
        (datetime(2024, 1, 1, tzinfo=UTC), 9999, "2024-01-01_00-00-00_run-9999.log"),
        (datetime(2024, 1, 1, tzinfo=UTC), 12345, "2024-01-01_00-00-00_run-12345.log"),
        # a local time is converted to UTC: 02:30 at +02:00 is 00:30 UTC, the day before when it crosses midnight
        (datetime(2024, 6, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))), 7, "2024-05-31_23-30-00_run-0007.log"),
        # a naive time is taken as UTC, never as the machine's local time
        (datetime(2024, 6, 1, 1, 30), 7, "2024-06-01_01-30-00_run-0007.log"),
    ],
)
def test_run_log_path_names_the_file_by_utc_start_and_padded_number(started_at, number, name):
    assert run_log_path(Path("/logs/ci"), started_at, number) == Path("/logs/ci") / name


def test_run_log_path_rejects_a_negative_number():
    with pytest.raises(ValueError, match="negative"):
        run_log_path(Path("logs"), datetime.now(UTC), -1)


def test_run_log_file_exists_from_the_start_and_is_closed_after(tmp_path):
    path = tmp_path / "nested" / "run.log"
    with run_log(path, 1) as log:
        assert path.exists()
        log.info("step {} started", "checkout")
    assert "step checkout started" in path.read_text()
    # after the block, records of that run no longer reach the file
    logger.bind(run=1).info("late record")
    assert "late record" not in path.read_text()


def test_records_of_parallel_runs_go_to_their_own_files_only(tmp_path):
    paths = {run: tmp_path / f"run-{run}.log" for run in (1, 2)}
    barrier = threading.Barrier(2)

    def work(run: int) -> None:
        with run_log(paths[run], run) as log:
            barrier.wait(timeout=10)  # both sinks are open while both threads log
            for i in range(200):
                log.info("run {} line {}", run, i)
            barrier.wait(timeout=10)

    threads = [threading.Thread(target=work, args=(run,)) for run in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    logger.info("unbound record")

    for run, other in ((1, 2), (2, 1)):
        text = paths[run].read_text()
        assert text.count(f"run {run} line") == 200
        assert f"run {other} line" not in text
        assert "unbound record" not in text
        assert len(text.splitlines()) == 200  # every line whole: no interleaving


def test_two_scopes_with_the_same_run_number_write_their_own_files(tmp_path):
    # Run numbers count per app / repository: "web" and "bot" both have a run 7 at once.
    paths = {scope: tmp_path / f"{scope}.log" for scope in ("web", "bot")}
    with run_log(paths["web"], 7, scope="web") as web, run_log(paths["bot"], 7, scope="bot") as bot:
        web.info("web line")
        bot.info("bot line")
        logger.bind(run=7).info("unscoped run 7")
    assert paths["web"].read_text().count("line") == 1 and "web line" in paths["web"].read_text()
    assert paths["bot"].read_text().count("line") == 1 and "bot line" in paths["bot"].read_text()
    assert "unscoped" not in paths["web"].read_text() + paths["bot"].read_text()


def test_console_line_names_the_scope_between_agent_and_run():
    console = io.StringIO()
    configure_logging("cd", [], console=console)
    logger.bind(run=3, scope="web").info("deployed")
    assert "| INFO     | cd web run 3 | deployed" in console.getvalue()


def _raise_with_secret() -> None:
    raise RuntimeError(f"login failed with password {SECRET}")


def test_secret_is_redacted_in_messages_and_tracebacks_on_console_and_file(tmp_path):
    console = io.StringIO()
    configure_logging("ci", [SECRET, ""], console=console)
    path = tmp_path / "run.log"
    with run_log(path, 3) as log:
        log.info("using token {}", SECRET)
        try:
            _raise_with_secret()
        except RuntimeError:
            log.exception("push failed")

    for text in (console.getvalue(), path.read_text()):
        assert SECRET not in text
        assert "using token ***" in text
        assert "password ***" in text
        assert "Traceback" in text  # the traceback itself is kept, only the secret is masked
        assert "push failed" in text


def test_console_line_names_agent_and_run():
    console = io.StringIO()
    configure_logging("cd", [], console=console)
    logger.bind(run=12).warning("health check failed")
    line = console.getvalue()
    assert "| WARNING  | cd run 12 | health check failed" in line


def test_console_respects_level():
    console = io.StringIO()
    configure_logging("cd", [], level="WARNING", console=console)
    logger.info("quiet")
    logger.error("loud")
    assert "quiet" not in console.getvalue()
    assert "loud" in console.getvalue()


def test_run_log_keeps_info_when_the_console_is_quieter(tmp_path):
    console = io.StringIO()
    configure_logging("ci", [], level="WARNING", console=console)
    path = tmp_path / "run.log"
    with run_log(path, 8) as log:
        log.debug("noise")
        log.info("building image")
    assert "building image" in path.read_text()
    assert "noise" not in path.read_text()
    assert "building image" not in console.getvalue()


def test_configure_again_replaces_console_and_secrets():
    first, second = io.StringIO(), io.StringIO()
    configure_logging("ci", ["old-secret"], console=first)
    configure_logging("ci", ["new-secret"], console=second)
    logger.info("old-secret new-secret")
    assert first.getvalue() == ""
    assert second.getvalue().endswith("| old-secret ***\n")


def test_empty_secret_list_redacts_nothing():
    console = io.StringIO()
    configure_logging("ci", [], console=console)
    logger.info("nothing *** to hide here")
    assert "nothing *** to hide here" in console.getvalue()
    assert redact("abc", []) == "abc"
    assert redact("abc", [""]) == "abc"


def test_redact_masks_the_longer_of_overlapping_secrets_whole():
    assert redact("token=abcdef", ["abc", "abcdef"]) == "token=***"


def _touch_runs(log_dir: Path, numbers: list[int]) -> list[Path]:
    log_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in numbers:
        # start times deliberately out of order: the run number decides, not the time or mtime
        path = run_log_path(log_dir, datetime(2024, 1, 1, tzinfo=UTC) - timedelta(minutes=number), number)
        path.write_text(f"run {number}\n")
        paths.append(path)
    return paths


def test_prune_keeps_the_newest_runs_by_number(tmp_path):
    paths = dict(zip([9, 10, 11, 12345, 2], _touch_runs(tmp_path, [9, 10, 11, 12345, 2]), strict=True))
    removed = prune_run_logs(tmp_path, keep=3)
    assert removed == [paths[2], paths[9]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(paths[n].name for n in (10, 11, 12345))


def test_prune_never_touches_other_files(tmp_path):
    _touch_runs(tmp_path, [1, 2, 3])
    others = [tmp_path / "notes.txt", tmp_path / "run-0001.log", tmp_path / "2024-01-01_00-00-00_run-12.log"]
    for other in others:
        other.write_text("keep me")
    (tmp_path / "2024-01-01_00-00-00_run-0004.log").mkdir()  # a directory with a run-log name

    removed = prune_run_logs(tmp_path, keep=1)

    assert [p.name for p in removed] == [p.name for p in sorted(removed, key=lambda p: p.name[-8:])]
    assert len(removed) == 2
    assert all(other.exists() for other in others)
    assert (tmp_path / "2024-01-01_00-00-00_run-0004.log").is_dir()


def test_prune_of_a_missing_dir_or_under_the_limit_removes_nothing(tmp_path):
    assert prune_run_logs(tmp_path / "missing", keep=5) == []
    _touch_runs(tmp_path, [1, 2])
    assert prune_run_logs(tmp_path, keep=5) == []
    assert len(list(tmp_path.iterdir())) == 2


def test_prune_that_cannot_read_the_folder_logs_and_never_raises(tmp_path):
    not_a_folder = tmp_path / "logs"
    not_a_folder.write_text("a file where the log folder should be")
    with capture_logs() as logs:
        assert prune_run_logs(not_a_folder, keep=1) == []
    assert any("could not list run logs" in entry.message for entry in logs)
    assert not_a_folder.read_text() == "a file where the log folder should be"


def test_tail_returns_the_last_lines(tmp_path):
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i} " + "x" * 100 + "\n" for i in range(1000)))
    last = tail(path, 3)
    assert [line.split()[1] for line in last.splitlines()] == ["997", "998", "999"]
    assert last.endswith("\n")


def test_tail_of_short_missing_and_unterminated_files(tmp_path):
    path = tmp_path / "short.log"
    path.write_text("a\nb")
    assert tail(path, 50) == "a\nb"
    assert tail(path, 1) == "b"
    assert tail(path, 0) == ""
    assert tail(tmp_path / "missing.log") == ""


def test_capture_logs_collects_message_level_and_extra_from_threads():
    with capture_logs() as entries:
        logger.bind(run=5, step="test").debug("running {}", "pytest")
        thread = threading.Thread(target=lambda: logger.error("from a thread"))
        thread.start()
        thread.join()
    logger.info("after the block")

    assert [(e.message, e.level) for e in entries] == [("running pytest", "DEBUG"), ("from a thread", "ERROR")]
    assert entries[0].extra["run"] == 5
    assert entries[0]["step"] == "test"
    assert entries[0]["message"] == "running pytest"


def test_capture_logs_keeps_the_exception():
    with capture_logs(level="ERROR") as entries:
        logger.info("ignored")
        try:
            raise KeyError("x")
        except KeyError:
            logger.exception("boom")
    assert len(entries) == 1
    assert isinstance(entries[0].exception, KeyError)
