"""A real git project for the CI tests: a bare "GitHub" repository plus a working clone to commit in.

The sample project is a ``FROM scratch`` busybox app whose Dockerfile has a ``test`` stage, so a
whole pipeline (checkout, test in a container, build, push) takes a second or two.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.docker_env import BUSYBOX

SAMPLE_DOCKERFILE = """\
FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www/ /www/

FROM base AS test
COPY tests/ /tests/

FROM base
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
"""

SAMPLE_TEST = """\
#!/bin/sh
# The sample project's test suite: the page must greet.
grep -q hello /www/index.html && echo "sample tests passed"
"""

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **_GIT_ENV, "HOME": str(cwd or Path.cwd())}
    completed = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {completed.stderr}")
    return completed.stdout


@dataclass
class GitProject:
    """A bare repository (``url``) and a clone (``clone``) on branch ``branch``."""

    bare: Path
    clone: Path
    branch: str = "main"

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(
        self,
        files: Mapping[str, str | bytes] | None = None,
        message: str = "change",
        *,
        executable: tuple[str, ...] = (),
    ) -> str:
        """Write ``files`` (path -> content) in the clone, commit everything, return the new sha."""
        for name, content in (files or {}).items():
            path = self.clone / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
            if name in executable:
                path.chmod(0o755)
        git("add", "--all", cwd=self.clone)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.clone)
        return self.head()

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.clone).strip()

    def push(self) -> None:
        git("push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}", cwd=self.clone)

    def tag(self, name: str, *, message: str | None = None) -> str:
        """Tag HEAD (annotated when ``message`` is given) and push the tag; returns the commit sha."""
        if message is None:
            git("tag", name, cwd=self.clone)
        else:
            git("tag", "-a", name, "-m", message, cwd=self.clone)
        git("push", "--quiet", "origin", f"refs/tags/{name}", cwd=self.clone)
        return self.head()

    def commit_sample(self, message: str = "initial sample app", *, test_script: str = SAMPLE_TEST) -> str:
        """Commit the busybox sample app (Dockerfile with a ``test`` stage) and push it."""
        files: dict[str, str | bytes] = {
            "Dockerfile": SAMPLE_DOCKERFILE,
            "busybox": BUSYBOX.read_bytes(),
            "www/index.html": "<p>hello</p>\n",
            "tests/run.sh": test_script,
        }
        sha = self.commit(files, message, executable=("busybox", "tests/run.sh"))
        self.push()
        return sha


def make_git_project(root: Path, branch: str = "main") -> GitProject:
    bare = root / "origin.git"
    clone = root / "clone"
    git("init", "--quiet", "--bare", "--initial-branch", branch, str(bare), cwd=root)
    git("init", "--quiet", "--initial-branch", branch, str(clone), cwd=root)
    git("remote", "add", "origin", str(bare), cwd=clone)
    return GitProject(bare=bare, clone=clone, branch=branch)


@pytest.fixture
def git_project(tmp_path: Path) -> Iterator[GitProject]:
    root = tmp_path / "git"
    root.mkdir()
    project = make_git_project(root)
    yield project
    shutil.rmtree(root, ignore_errors=True)
