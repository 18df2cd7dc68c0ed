"""The checkout step against real git: exact commits, commit messages for bumps, refs, refusals."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci_agent.errors import StepFailed
from ci_agent.git import GitRunner, redact_url, strip_credentials
from tests.support.docker_env import busybox_dockerfile, unique, write_busybox_context
from tests.support.git_http import TOKEN_USER, GitHttpServer, git_argv_recorder
from tests.support.git_repos import GitProject, git


def test_checkout_gets_the_exact_older_commit_while_the_branch_moved_on(git_project: GitProject, tmp_path: Path):
    first = git_project.commit({"app.txt": "one\n"}, "first")
    git_project.push()
    git_project.commit({"app.txt": "two\n", "new.txt": "x"}, "second")
    git_project.push()
    workdir = tmp_path / "work"

    GitRunner().checkout(git_project.url, first, workdir)

    assert (workdir / "app.txt").read_text() == "one\n"
    assert not (workdir / "new.txt").exists()


def test_checkout_reuses_the_work_folder_and_removes_leftovers(git_project: GitProject, tmp_path: Path):
    first = git_project.commit({"app.txt": "one\n"}, "first")
    git_project.push()
    second = git_project.commit({"app.txt": "two\n"}, "second")
    git_project.push()
    workdir = tmp_path / "work"
    runner = GitRunner()
    runner.checkout(git_project.url, first, workdir)
    (workdir / "app.txt").write_text("edited by a test run\n")
    (workdir / "build-output").mkdir()

    runner.checkout(git_project.url, second, workdir)

    assert (workdir / "app.txt").read_text() == "two\n"
    assert not (workdir / "build-output").exists()


def test_checkout_of_a_commit_that_is_not_in_the_repository_fails_at_checkout(
    git_project: GitProject, tmp_path: Path
):
    git_project.commit({"a": "a"}, "first")
    git_project.push()

    with pytest.raises(StepFailed) as caught:
        GitRunner().checkout(git_project.url, "1" * 40, tmp_path / "work")

    assert caught.value.step == "checkout"
    assert "1" * 40 in caught.value.message


@pytest.mark.parametrize(
    "sha", ["--upload-pack=touch x", "HEAD", "abc", "A" * 40, "0" * 39 + "g", "1" * 40 + "\n--x"]
)
def test_a_crafted_commit_is_refused_before_git_runs(sha: str, tmp_path: Path):
    # A git binary that does not exist proves the refusal happened before any git command.
    runner = GitRunner(git=str(tmp_path / "no-such-git"))

    with pytest.raises(StepFailed) as caught:
        runner.checkout("file:///nowhere", sha, tmp_path / "work")

    assert caught.value.step == "checkout"
    assert "40 lowercase hex digits" in caught.value.message


@pytest.mark.parametrize("ref", ["refs/heads/--upload-pack=touch x", "--upload-pack=touch x", "a..b", "-x", "a b"])
def test_a_crafted_ref_is_refused_before_git_runs(ref: str, tmp_path: Path, git_project: GitProject):
    git_project.commit({"a": "a"}, "first")
    git_project.push()
    marker = Path("x")

    with pytest.raises(StepFailed) as caught:
        GitRunner(git=str(tmp_path / "no-such-git")).resolve(git_project.url, ref)

    assert "refusing" in caught.value.message
    assert not marker.exists()


def test_resolve_branch_lightweight_and_annotated_tags_and_shas(git_project: GitProject):
    first = git_project.commit({"a": "1"}, "first")
    git_project.push()
    git_project.tag("v1.0.0", message="release 1.0.0")
    second = git_project.commit({"a": "2"}, "second")
    git_project.push()
    git_project.tag("light")
    runner = GitRunner()

    assert runner.resolve(git_project.url, "main") == second
    assert runner.resolve(git_project.url, "refs/heads/main") == second
    assert runner.resolve(git_project.url, "v1.0.0") == first
    assert runner.resolve(git_project.url, "light") == second
    assert runner.resolve(git_project.url, first.upper()) == first
    with pytest.raises(StepFailed, match="no branch or tag 'nope'"):
        runner.resolve(git_project.url, "nope")


def test_commit_messages_since_the_previous_release(git_project: GitProject, tmp_path: Path):
    released = git_project.commit({"a": "1"}, "fix: one")
    git_project.commit({"a": "2"}, "feat: two\n\nbody")
    head = git_project.commit({"a": "3"}, "chore: three")
    git_project.push()
    workdir = tmp_path / "work"
    runner = GitRunner()
    runner.checkout(git_project.url, head, workdir)

    assert runner.commit_messages(workdir, released, head) == ["chore: three", "feat: two\n\nbody"]
    assert runner.commit_messages(workdir, None, head) == ["chore: three"]
    # A previous release this repository does not know (another repository, a rewritten history).
    assert runner.commit_messages(workdir, "2" * 40, head) == ["chore: three"]


def test_commit_messages_when_the_previous_release_is_not_an_ancestor(git_project: GitProject, tmp_path: Path):
    base = git_project.commit({"a": "1"}, "base")
    git_project.push()
    abandoned = git_project.commit({"a": "2"}, "feat: abandoned")
    git_project.push()
    # Force-push a different history: the release made from `abandoned` is no ancestor any more.
    git("reset", "--hard", base, cwd=git_project.clone)
    head = git_project.commit({"a": "3"}, "fix: rewritten")
    git("push", "--quiet", "--force", "origin", "HEAD:refs/heads/main", cwd=git_project.clone)
    workdir = tmp_path / "work"
    runner = GitRunner()
    runner.checkout(git_project.url, abandoned, workdir)
    runner.checkout(git_project.url, head, workdir)

    assert runner.commit_messages(workdir, abandoned, head) == ["fix: rewritten"]


def test_credentials_in_the_repository_url_never_appear_in_messages(tmp_path: Path):
    url = "http://someone:s3cr3t-token@127.0.0.1:9/owner/repo.git"

    with pytest.raises(StepFailed) as caught:
        GitRunner(timeout=20).resolve(url, "main")

    assert "s3cr3t-token" not in str(caught.value)
    assert "***@127.0.0.1:9" in caught.value.message


def test_url_helpers():
    assert redact_url("https://u:p@github.com/o/r.git") == "https://***@github.com/o/r.git"
    assert strip_credentials("https://u:p@github.com:8443/o/r.git") == "https://github.com:8443/o/r.git"
    assert strip_credentials("https://github.com/o/r.git") == "https://github.com/o/r.git"
    assert strip_credentials("git@github.com:o/r.git") == "git@github.com:o/r.git"


def test_an_annotated_tag_object_is_peeled_to_the_commit_it_tags(git_project: GitProject, tmp_path: Path):
    # GitHub's push payload for an annotated tag names the tag OBJECT in `after`.
    commit = git_project.commit({"app.txt": "tagged\n"}, "tagged")
    git_project.push()
    git_project.tag("v1.0.0", message="release 1.0.0")
    git_project.commit({"app.txt": "later\n"}, "later")
    git_project.push()
    tag_object = git("rev-parse", "refs/tags/v1.0.0", cwd=git_project.clone).strip()
    assert tag_object != commit
    workdir = tmp_path / "work"

    checked_out = GitRunner().checkout(git_project.url, tag_object, workdir)

    assert checked_out == commit
    assert (workdir / "app.txt").read_text() == "tagged\n"
    assert GitRunner().remote_commit(git_project.url, "refs/tags/v1.0.0") == commit


def test_a_hook_planted_in_the_work_folder_never_runs(git_project: GitProject, tmp_path: Path):
    first = git_project.commit({"app.txt": "one\n"}, "first")
    git_project.push()
    second = git_project.commit({"app.txt": "two\n"}, "second")
    git_project.push()
    workdir = tmp_path / "work"
    runner = GitRunner()
    runner.checkout(git_project.url, first, workdir)
    marker = tmp_path / "hook-ran"
    # What a test run of the host runner could leave behind: every hook a checkout or fetch may call.
    for hook in ("post-checkout", "reference-transaction", "post-index-change", "fsmonitor-watchman"):
        path = workdir / ".git" / "hooks" / hook
        path.write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        path.chmod(0o755)
    git("config", "core.fsmonitor", f"echo fsmonitor >> {marker}; false", cwd=workdir)

    runner.checkout(git_project.url, second, workdir)

    assert (workdir / "app.txt").read_text() == "two\n"
    assert not marker.exists(), marker.read_text()


ARGV_TOKEN = "ghp-argv-test-Zr4n-never-in-argv"


@pytest.fixture
def git_http_server(tmp_path: Path) -> Iterator[GitHttpServer]:
    """A smart-HTTP git server over ``git_project``'s bare repository, wanting ARGV_TOKEN."""
    with GitHttpServer(tmp_path / "git", TOKEN_USER, ARGV_TOKEN) as server:
        yield server


def test_a_token_in_the_repository_url_never_reaches_gits_argv(
    git_project: GitProject, git_http_server: GitHttpServer, tmp_path: Path
):
    sha = git_project.commit({"app.txt": "private\n"}, "private")
    git_project.push()
    token = ARGV_TOKEN
    url = git_http_server.url("origin.git", user=TOKEN_USER, password=token)
    wrapper, record = git_argv_recorder(tmp_path / "bin")
    runner = GitRunner(git=str(wrapper))

    assert runner.checkout(url, sha, tmp_path / "work") == sha
    assert runner.remote_commit(url, "refs/heads/main") == sha

    argv = record.read_text()
    assert "argv: " in argv and "fetch" in argv and "ls-remote" in argv and "remote-http" in argv
    assert token not in argv
    assert git_http_server.authorized > 0
    with pytest.raises(StepFailed) as caught:
        GitRunner().remote_commit(git_http_server.url("origin.git"), "refs/heads/main")
    assert "exit" in caught.value.message  # no credentials: the server refuses (401)


@pytest.mark.docker
def test_a_checkout_under_a_strict_umask_still_builds_an_image_a_non_root_user_can_read(
    git_project: GitProject, tmp_path: Path, docker_client, docker_janitor
):
    # systemd's UMask=0027 made the checkout 0640, Docker copied that into the image, and the app's
    # non-root USER got "Permission denied" on its own files.
    sha = git_project.commit({"code.txt": "hello from the app\n", "run.sh": "#!/bin/sh\n"}, "app")
    git_project.push()
    workdir = tmp_path / "private" / "work"
    workdir.parent.mkdir(mode=0o700)
    previous = os.umask(0o027)
    try:
        GitRunner().checkout(git_project.url, sha, workdir)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((workdir / "code.txt").stat().st_mode) == 0o644

    context = write_busybox_context(
        tmp_path / "context", busybox_dockerfile(cmd=["cat", "/app/code.txt"], extra="USER 65534")
    )
    shutil.copy2(workdir / "code.txt", context / "files" / "code.txt")  # keeps the checkout's mode
    (context / "files" / "app").mkdir()
    (context / "files" / "code.txt").rename(context / "files" / "app" / "code.txt")
    tag = unique("picicd-umask")
    docker_janitor.images.add(tag)
    docker_client.images.build(path=str(context), tag=tag, rm=True)
    output = docker_client.containers.run(tag, remove=True)
    assert output.decode() == "hello from the app\n"


def test_a_checkout_fetches_only_what_the_work_folder_lacks(git_project: GitProject, tmp_path: Path):
    """The work folder keeps the fetched commit as a ref, so the next fetch offers it ("have") and the server
    sends only the new objects: without it each run received the repository's whole history again."""
    first = git_project.commit({"big.bin": os.urandom(1 << 20)}, "first")
    git_project.push()
    workdir = tmp_path / "work"
    runner = GitRunner()
    runner.checkout(git_project.url, first, workdir)
    assert git("rev-parse", "refs/pi-cicd/fetched", cwd=workdir).strip() == first
    second = git_project.commit({"app.txt": "two\n"}, "second")
    git_project.push()
    # The server loses the first commit's big blob: only a fetch of everything would need it.
    blob = git("rev-parse", f"{first}:big.bin", cwd=git_project.clone).strip()
    loose = git_project.bare / "objects" / blob[:2] / blob[2:]
    assert loose.is_file(), "the push left the blob loose in the bare repository"
    loose.unlink()

    assert runner.checkout(git_project.url, second, workdir) == second
    assert (workdir / "app.txt").read_text() == "two\n" and (workdir / "big.bin").stat().st_size == 1 << 20
    assert git("rev-parse", "refs/pi-cicd/fetched", cwd=workdir).strip() == second
