"""The scripts that run as root read nothing another user could have written, and the demo keeps its files private.

Another user is uid 65534 (``nobody``, through ``setpriv``). It prepares a demo folder where root's
``scripts/demo-clean`` or ``scripts/demo`` will look, in a folder shaped like ``/var/tmp`` (root's,
world-writable, sticky), with the marker and a ``demo.vars`` holding a command substitution that would
write a canary file into a folder only root can write. Root's script must refuse, say which folder and
what is wrong, and leave the canary unwritten and the folder in place for the user to look at.

The privacy scenario starts the demo's registry, SMTP sink, git repository and agents
(``scripts/demo --setup-only``) under umask 000, gives the registry an image and the sink a mail, and
reads back the mode of everything in the demo's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import smtplib
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from tests.support.docker_env import unique
from tests.support.other_user import NOBODY, folder_under_tmp, needs_root
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo"
DEMO_CLEAN = ROOT / "scripts" / "demo-clean"
pytestmark = needs_root


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder like /var/tmp: root's, mode 1777 (anyone may create entries; only their owner may remove them)."""
    with folder_under_tmp("picicd-root-scripts-", 0o1777) as path:
        yield path


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """Where the planted command would write: a folder only root can write, so only root can create it."""
    return tmp_path / "ran-as-root"


def as_nobody(script: str) -> None:
    subprocess.run([*NOBODY, "/bin/sh", "-ec", script], check=True, timeout=30)


def run_as_root(script: Path, demo_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PICICD_DEMO_DIR": str(demo_dir), "PICICD_DEMO_QUIET": "1", **env}
    return subprocess.run(
        [str(script), *args], env=environ, capture_output=True, text=True, timeout=120, check=False
    )


def plant(folder: Path, vars_text: str) -> None:
    """As nobody: a demo folder with the marker and ``demo.vars``."""
    as_nobody(
        f"mkdir {folder}; touch {folder}/.pi-cicd-demo; cat >{folder}/demo.vars <<'EOF'\n{vars_text}EOF\n"
    )


@pytest.mark.reliability(
    "another user (nobody) made the demo folder first, in a /var/tmp-like folder, with the marker and "
    "demo.vars holding IMAGE=$(id > CANARY); root runs scripts/demo-clean",
    "demo-clean refuses with exit 1 naming the folder, its owner and how to fix it; nothing in demo.vars "
    "runs (no canary); the folder is left as it was",
)
def test_demo_clean_refuses_a_folder_another_user_made(
    shared_tmp: Path, canary: Path, observed: Callable[[str], None]
) -> None:
    demo_dir = shared_tmp / "pi-cicd-demo"
    plant(demo_dir, f"IMAGE=$(id > {canary})\n")

    result = run_as_root(DEMO_CLEAN, demo_dir)

    observed(f"exit {result.returncode}: {result.stderr.strip()}")
    assert not canary.exists(), f"root ran the planted command: {canary.read_text()}"
    assert result.returncode == 1, result.stdout + result.stderr
    assert str(demo_dir) in result.stderr
    assert "owned by nobody (uid 65534)" in result.stderr
    assert f"rm -rf {demo_dir}" in result.stderr  # the way out
    assert (demo_dir / "demo.vars").exists()


@pytest.mark.reliability(
    "another user (nobody) made the demo folder as a symbolic link to a folder of its own holding the marker "
    "and demo.vars with IMAGE=$(id > CANARY); root runs scripts/demo-clean",
    "demo-clean refuses with exit 1 saying the folder is a symbolic link; nothing runs (no canary); the link "
    "and its target are left as they were",
)
def test_demo_clean_refuses_a_symlinked_folder(
    shared_tmp: Path, canary: Path, observed: Callable[[str], None]
) -> None:
    target = shared_tmp / "nobodys"
    plant(target, f"IMAGE=$(id > {canary})\n")
    demo_dir = shared_tmp / "pi-cicd-demo"
    as_nobody(f"ln -s {target} {demo_dir}")

    result = run_as_root(DEMO_CLEAN, demo_dir)

    observed(f"exit {result.returncode}: {result.stderr.strip()}")
    assert not canary.exists(), f"root ran the planted command: {canary.read_text()}"
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{demo_dir} is a symbolic link" in result.stderr
    assert demo_dir.is_symlink() and (target / "demo.vars").exists()


@pytest.mark.reliability(
    "root's demo folder sits where others could swap it: the folder itself is root's but mode 0777, or its "
    "parent is writable by others without the sticky bit, or a parent is another user's symbolic link",
    "demo-clean refuses with exit 1 naming the path at fault and what is wrong with it; the folder stays",
)
@pytest.mark.parametrize("flaw", ["folder-0777", "parent-0777-not-sticky", "parent-symlink-of-nobody"])
def test_demo_clean_refuses_a_folder_others_could_change(
    shared_tmp: Path, canary: Path, flaw: str, observed: Callable[[str], None]
) -> None:
    if flaw == "folder-0777":
        demo_dir = shared_tmp / "pi-cicd-demo"
        at_fault, wrong = demo_dir, "writable by other users (mode 0777)"
    elif flaw == "parent-0777-not-sticky":
        parent = shared_tmp / "open"
        parent.mkdir()
        parent.chmod(0o777)
        demo_dir = parent / "pi-cicd-demo"
        at_fault, wrong = parent, "writable by other users without the sticky bit (mode 0777)"
    else:
        real = shared_tmp / "real"
        real.mkdir(mode=0o755)
        as_nobody(f"ln -s {real} {shared_tmp}/link")
        demo_dir = shared_tmp / "link" / "pi-cicd-demo"
        at_fault, wrong = shared_tmp / "link", "a symbolic link owned by nobody (uid 65534)"
    demo_dir.mkdir(mode=0o700)
    (demo_dir / ".pi-cicd-demo").touch()
    (demo_dir / "demo.vars").write_text(f"IMAGE=$(id > {canary})\n")
    if flaw == "folder-0777":
        demo_dir.chmod(0o777)

    result = run_as_root(DEMO_CLEAN, demo_dir)

    observed(f"{flaw}: exit {result.returncode}: {result.stderr.strip()}")
    assert not canary.exists()
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{at_fault} is {wrong}" in result.stderr
    assert (demo_dir / "demo.vars").exists()


BAD_LINES = {
    "command-substitution": "IMAGE=$(id > {canary})",
    "backquotes": "CONTAINER=`id > {canary}`",
    "semicolon": "BG_CONTAINER=picicd-demo-bluegreen; id > {canary}",
    "unknown-key": "PATH=/tmp/{canary.name}",
    "no-equals": "id > {canary}",
}


@pytest.mark.reliability(
    "root's own demo folder (root, 0700, marker) whose demo.vars has a line that is not KEY=value with a known "
    "key and a plain value: a command substitution, backquotes, '; command', an unknown key (PATH), no '='",
    "demo-clean reads demo.vars as data: it refuses with exit 1 naming the file, the line number and what is "
    "wrong, stops no process, runs nothing (no canary) and leaves the folder",
)
@pytest.mark.parametrize("line", list(BAD_LINES), ids=list(BAD_LINES))
def test_demo_clean_reads_demo_vars_as_data(
    tmp_path: Path, canary: Path, line: str, observed: Callable[[str], None]
) -> None:
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir(mode=0o700)
    (demo_dir / ".pi-cicd-demo").touch()
    bad = BAD_LINES[line].format(canary=canary)
    (demo_dir / "demo.vars").write_text(f"CONTAINER=picicd-demo-app\n{bad}\nAPP_URL=http://127.0.0.1:8080\n")
    # A process the cleanup would stop if it went on: it names the folder, and its pid is recorded.
    (demo_dir / "pids").mkdir(mode=0o700)
    sleeper = subprocess.Popen(["sh", "-c", "sleep 60; :", str(demo_dir)], start_new_session=True)
    try:
        (demo_dir / "pids" / "sleeper.pid").write_text(f"{sleeper.pid}\n")

        result = run_as_root(DEMO_CLEAN, demo_dir)

        observed(f"{line}: exit {result.returncode}: {result.stderr.strip()}")
        assert not canary.exists()
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"{demo_dir}/demo.vars line 2" in result.stderr
        assert sleeper.poll() is None  # nothing was stopped
        assert (demo_dir / "demo.vars").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.reliability(
    "another user (nobody) made the demo folder first with the marker and demo.vars holding IMAGE=$(id > "
    "CANARY); root runs scripts/demo (which cleans up before it starts)",
    "the demo refuses at once with exit 1 naming the folder and its owner, before it installs or starts "
    "anything; nothing runs (no canary)",
)
def test_demo_refuses_a_folder_another_user_made(
    shared_tmp: Path, canary: Path, tmp_path: Path, observed: Callable[[str], None]
) -> None:
    demo_dir = shared_tmp / "pi-cicd-demo"
    plant(demo_dir, f"IMAGE=$(id > {canary})\n")
    # Were the demo to go on, its first step would call this apt-get, which stops it there.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text("#!/bin/sh\nexit 3\n")
    (bin_dir / "apt-get").chmod(0o755)
    (bin_dir / "docker").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "docker").chmod(0o755)

    result = run_as_root(
        DEMO, demo_dir, PATH=f"{bin_dir}:/usr/bin:/bin", PICICD_DEMO_PYTHON=sys.executable, HOME=str(tmp_path)
    )

    observed(f"exit {result.returncode}: {result.stderr.strip()}")
    assert not canary.exists()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "owned by nobody (uid 65534)" in result.stderr and str(demo_dir) in result.stderr
    assert "Checking what this machine has" not in result.stdout  # refused before its first step


@pytest.mark.docker
@pytest.mark.reliability(
    "another user (nobody) planted TMPDIR/picicd-proxy-image.lock, the lock file's old fixed name in a "
    "world-writable folder, as a symbolic link to a file of root's; root runs scripts/proxy-image",
    "the script keeps its lock where only root writes (/run/pi-cicd; base-image and systemd-test-image use "
    "the same helper): it prints the image and root's file is untouched",
)
def test_image_scripts_follow_no_lock_planted_in_tmp(
    shared_tmp: Path, tmp_path: Path, observed: Callable[[str], None]
) -> None:
    precious = tmp_path / "precious"
    precious.write_text("root's data\n")
    as_nobody(f"ln -s {precious} {shared_tmp}/picicd-proxy-image.lock")

    result = subprocess.run(
        [str(ROOT / "scripts" / "proxy-image")], env={**os.environ, "TMPDIR": str(shared_tmp)},
        capture_output=True, text=True, timeout=600, check=False,
    )

    observed(f"exit {result.returncode}, printed {result.stdout.strip()!r}; root's file: {precious.read_text()!r}")
    assert precious.read_text() == "root's data\n"
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("picicd/caddy:")


def demo_env(demo_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PICICD_DEMO_DIR": str(demo_dir),
        "PICICD_DEMO_NAME": unique("picicd-demo"),
        "PICICD_DEMO_PYTHON": sys.executable,
        **{f"PICICD_DEMO_{name}_PORT": str(free_port())
           for name in ("APP", "CI", "CI_DASHBOARD", "REGISTRY", "SMTP", "BLUE_GREEN")},
    }


def settings_of(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return dict(pairs)


def push_to_registry(registry: str) -> None:
    """A small image (config, one layer, manifest) through the registry's HTTP API: files in its storage."""
    def blob(data: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = httpx.post(f"http://{registry}/v2/probe/private/blobs/uploads/", timeout=10)
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        if location.startswith("/"):
            location = f"http://{registry}{location}"
        # The upload's URL carries its own query (_state): the digest is added to it, not put in its place.
        put = httpx.put(httpx.URL(location).copy_merge_params({"digest": digest}), content=data, timeout=10,
                        headers={"Content-Type": "application/octet-stream"})
        assert put.status_code == 201, put.text
        return {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(data), "digest": digest}

    layer = blob(b"not really a tar, the registry does not look")
    config = {**blob(json.dumps({"architecture": "amd64", "os": "linux"}).encode()),
              "mediaType": "application/vnd.docker.container.image.v1+json"}
    manifest_type = "application/vnd.docker.distribution.manifest.v2+json"
    manifest = {"schemaVersion": 2, "mediaType": manifest_type, "config": config, "layers": [layer]}
    answer = httpx.put(f"http://{registry}/v2/probe/private/manifests/1", content=json.dumps(manifest), timeout=10,
                       headers={"Content-Type": manifest_type})
    assert answer.status_code == 201, answer.text


def wait_for_mail(directory: Path) -> list[Path]:
    deadline = time.monotonic() + 30
    while not (found := sorted(directory.glob("*.eml"))):
        assert time.monotonic() < deadline, f"no mail in {directory} after 30 s"
        time.sleep(0.1)
    return found


@pytest.mark.docker
@pytest.mark.timeout(900)
@pytest.mark.reliability(
    "the demo started under umask 000 (scripts/demo --setup-only: registry, SMTP sink, git repository, both "
    "agents), then an image pushed to its registry and a mail sent to its sink",
    "the demo folder is root's and 0700, and nothing in it (consoles, mail, git repository, registry storage, "
    "settings, agents' logs and state) is open to other users; demo-clean then removes it",
)
def test_demo_keeps_what_it_writes_private(tmp_path: Path, observed: Callable[[str], None]) -> None:
    demo_dir = tmp_path / "demo"
    env = demo_env(demo_dir)
    try:
        started = subprocess.run(
            ["/bin/sh", "-c", 'umask 000; exec "$0" --setup-only', str(DEMO)], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=800, check=False,
        )
        assert started.returncode == 0, (started.stdout + started.stderr)[-4000:]
        ci = settings_of(demo_dir / "ci.env")
        push_to_registry(ci["CI_IMAGE"].split("/", 1)[0])
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "test@localhost", "you@localhost", "private?"
        message.set_content("a release report")
        with smtplib.SMTP("127.0.0.1", int(ci["SMTP_PORT"]), timeout=10) as smtp:
            smtp.send_message(message)
        wait_for_mail(demo_dir / "mail")

        top = demo_dir.stat()
        entries = [path for path in demo_dir.rglob("*") if not path.is_symlink()]
        open_to_others = [f"{path.relative_to(demo_dir)} {oct(stat.S_IMODE(path.lstat().st_mode))}"
                          for path in entries if path.lstat().st_mode & 0o077]
        parts = {part: sum(1 for path in entries if path.relative_to(demo_dir).parts[0] == part)
                 for part in ("logs", "mail", "git", "work", "registry", "ci", "cd")}
        observed(f"demo folder {oct(stat.S_IMODE(top.st_mode))} uid {top.st_uid}; {len(entries)} entries "
                 f"({', '.join(f'{name} {count}' for name, count in parts.items())}); open to others: "
                 f"{open_to_others or 'none'}")
        assert (top.st_uid, stat.S_IMODE(top.st_mode)) == (0, 0o700)
        assert all(parts.values()), parts  # each kind of file is there to be judged
        assert not open_to_others
    finally:
        cleaned = subprocess.run([str(DEMO_CLEAN)], env={**env, "PICICD_DEMO_QUIET": "1"}, capture_output=True,
                                 text=True, timeout=120, check=False)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert not demo_dir.exists()
