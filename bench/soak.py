"""Months of CI runs and deploys, compressed: does anything grow? RSS, fds, disk, state, bytes written.

    python -m bench.soak                          # 300 runs over 3 apps, into ./soak-out
    python -m bench.soak --runs 600 --apps 4 --out /tmp/soak

One ``ci-agent serve`` (a repos file of ``--apps`` busybox apps, built ``FROM scratch`` without RUN
steps, host tests) and one ``cd-agent watch`` (an apps file of the same apps, 1 s polls, the default
``CD_STATE_FLUSH_INTERVAL`` and ``CD_KEEP_IMAGES``) run as real processes over a throw-away registry
and this machine's dockerd. A round pushes one commit to every app and waits until each run has ended
and each release is deployed or rolled back; every ``FAIL_EVERY``-th commit has a failing test suite
(no release), every ``BROKEN_EVERY``-th a release whose process exits at once (the watcher deploys it,
the health check fails, it rolls back). Every ``--kill-every`` rounds one agent (CI and CD in turn)
is SIGKILLed between rounds with its children and started again.

After each round one row of ``soak.csv``: per agent the RSS and open file descriptors of its process
tree, the size of its state databases (with their ``-wal`` files), of its ``LOG_DIR`` and of the CI
agent's git checkouts, and ``write_bytes`` of ``/proc/PID/io`` (the agent,
its threads and reaped children: git, deploy processes; summed over restarts); for the engine (via
the SDK's ``df()``) the images of this soak (count, bytes), every image layer, and the build cache. The
agents' consoles go to a tmpfs (``/dev/shm``): a Pi's journald would take them, and tmpfs writes do
not count. Then the agents idle ``--idle`` seconds: bytes written per idle poll (polls counted from the
watcher's ``/metrics``).

``soak.png`` plots each metric over the run count (kills marked); the summary gives each metric's
least-squares slope after warm-up, per 100 runs, fitted within each agent's life (a restart starts a
new level, not a trend), and whether it is flat: its change over the measured span within
``TOLERANCES``. Needs dockerd and ``/bin/busybox``; plotting needs the ``bench`` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx

from bench.idle_cpu import rss_mib
from bench.idle_writes import write_bytes
from cd_agent.apps import AppPaths
from cd_agent.state import DeployState
from tests.support.agent_process import AgentProcess
from tests.support.ci_agent_server import FINISHED
from tests.support.docker_env import DockerJanitor, unique
from tests.support.many_apps import toml_text
from tests.support.many_repos import DOCKERFILE, PASSING, ManyReposAgent, Repo, launch_many, new_repo
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.registry_server import RegistryServer, start_registry

FAIL_EVERY = 7  # every 7th commit of the soak fails its tests
BROKEN_EVERY = 11  # every 11th releases an app that exits at once (rolled back)
FAILING = "#!/bin/sh\necho 'expected 200, got 500' >&2\nexit 1\n"
BROKEN = DOCKERFILE.replace(
    'CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]', 'CMD ["/bin/busybox", "false"]'
)
# Runs of each app left out after an agent's restart: the CI agent's Docker SDK client fills its pools
# again (one per API path, up to 25) over its repository's first five or six runs.
REWARM_PER_APP = 7
CD_POLL = "1"
CD_DEFAULT_INTERVAL = 60.0
MIB = 1024 * 1024

# What "flat" allows: the fitted change over the measured span (metric units), per metric.
TOLERANCES = {
    "ci_rss_mib": 3.0, "cd_rss_mib": 3.0, "ci_fds": 2.0, "cd_fds": 2.0,
    "soak_images": 3.0 * 4, "soak_images_mib": 10.0, "build_cache_mib": 10.0,
    "ci_state_mib": 1.0, "cd_state_mib": 1.0, "ci_work_mib": 10.0, "ci_logs_mib": 1.0, "cd_logs_mib": 1.0,
}
COLUMNS = (
    "runs", "round", "ci_rss_mib", "cd_rss_mib", "ci_fds", "cd_fds", "ci_procs", "cd_procs", "soak_images",
    "soak_images_mib", "engine_layers_mib", "build_cache_mib", "ci_state_mib", "cd_state_mib", "ci_work_mib",
    "ci_logs_mib", "cd_logs_mib",
    "ci_written_mib", "cd_written_mib", "ci_life", "cd_life", "failed_runs", "rollbacks", "seconds",
)


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (children of children too)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_rss_mib(pid: int) -> float:
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_mib(member)
    return total


def tree_fds(pid: int) -> int:
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{member}/fd"))
    return total


def folder_mib(path: Path, pattern: str = "*") -> float:
    """Bytes of the files under ``path`` whose names match ``pattern``, in MiB."""
    return sum(item.stat().st_size for item in path.rglob(pattern) if item.is_file()) / MIB if path.exists() else 0.0


def engine_disk(client: Any, registry_host: str) -> dict[str, float]:
    """What ``docker system df`` shows: this soak's images (tagged or pulled from its registry), every
    image layer of the engine, and the build cache."""
    # One disk usage operation at a time per engine: another one (a test, `docker system df`) makes it fail.
    df = wait_for(client.df, timeout=300, interval=1, what="docker system df")
    ours = [
        image for image in df.get("Images") or []
        if any(name.startswith(registry_host) for name in _names(image))
    ]
    return {
        "soak_images": len(ours),
        # each image's own bytes: what removing it alone would free (busybox is shared by all of them)
        "soak_images_mib": sum(image["Size"] for image in ours) / MIB,  # each counted whole: busybox in each
        "engine_layers_mib": (df.get("LayersSize") or 0) / MIB,
        "build_cache_mib": sum(item.get("Size", 0) for item in df.get("BuildCache") or []) / MIB,
    }


def _names(image: dict[str, Any]) -> list[str]:
    return [*(image.get("RepoTags") or []), *(image.get("RepoDigests") or [])]


def cd_polls(port: int) -> int:
    """Registry polls of every app so far (``picicd_cd_polls`` of the watcher's ``/metrics``)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counts = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith("picicd_cd_polls_total")]
    return int(sum(float(count) for count in counts))


@dataclass
class Agent:
    """One agent process across its restarts: write_bytes of the lives before the current one."""

    process: AgentProcess
    state: Path
    logs: Path
    written_before: int = 0
    life: int = 1

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def written(self) -> int:
        return self.written_before + write_bytes(self.pid)

    def kill(self) -> None:
        self.written_before = self.written()
        self.process.kill()
        self.life += 1


@dataclass
class Idle:
    seconds: float
    polls: int
    cd_bytes: int
    ci_bytes: int
    # what one request to the watcher's listener makes it write (bytes, the mean of a few)
    metrics_bytes: float = 0.0
    page_bytes: float = 0.0

    @property
    def per_poll(self) -> float:
        return self.cd_bytes / self.polls if self.polls else float("nan")


@dataclass
class Soak:
    """The two agents, their apps and what they left on the engine; ``round()`` is one commit per app."""

    root: Path
    console: Path
    apps: int
    kill_every: int = 0
    client: Any = field(default_factory=lambda: docker.from_env(version="auto"))
    rows: list[dict[str, float]] = field(default_factory=list)
    kills: list[tuple[int, str]] = field(default_factory=list)
    commits: int = 0
    failed_runs: int = 0
    surprises: list[str] = field(default_factory=list)  # runs that did not end as their commit meant
    rollbacks: int = 0

    def __post_init__(self) -> None:
        self.janitor = DockerJanitor(self.client)
        self.prefix = unique("picicd-soak")
        self.janitor.name_prefixes.add(self.prefix)
        self.registry: RegistryServer = start_registry(self.root / "registry")
        self.repos: list[Repo] = [
            new_repo(self.root, self.registry, f"s{index}", f"soak/app-{index}", f"soak-secret-{index}-0123456789")
            for index in range(self.apps)
        ]
        self.ci_ports = (free_port(), free_port())
        self.cd_port = free_port()
        self.ci = Agent(self._start_ci().process, self.root / "ci" / "state", self.root / "ci" / "logs")
        self.cd = Agent(self._start_cd(), self.root / "cd" / "state", self.root / "cd" / "logs")

    @property
    def ci_agent(self) -> ManyReposAgent:
        return self._ci_agent

    def _start_ci(self) -> ManyReposAgent:
        (self.root / "ci").mkdir(exist_ok=True)
        console = self.console / "ci"
        console.mkdir(exist_ok=True)
        self._ci_agent = launch_many(self.root / "ci", self.repos, *self.ci_ports, {}, console)
        return self._ci_agent

    def _start_cd(self) -> AgentProcess:
        folder = self.root / "cd"
        folder.mkdir(exist_ok=True)
        tables = {
            f"s{index}": {
                "image": repo.image, "container_name": f"{self.prefix}-{index}",
                "ports": f"127.0.0.1:{free_port()}:8080",
                "poll_interval": CD_POLL, "health_grace": "1", "health_timeout": "15", "stop_timeout": "1",
            }
            for index, repo in enumerate(self.repos)
        }
        apps = folder / "apps.toml"
        if not apps.exists():
            apps.write_text(toml_text(tables))
            apps.chmod(0o600)
        environ = {
            "CD_APPS_FILE": str(apps), "STATE_DIR": str(folder / "state"), "LOG_DIR": str(folder / "logs"),
            "CD_DASHBOARD_HOST": "127.0.0.1", "CD_DASHBOARD_PORT": str(self.cd_port),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        }
        console = self.console / "cd"
        console.mkdir(exist_ok=True)
        process = AgentProcess("cd_agent", ["watch"], environ, console).start()
        process.wait_until(lambda: _answers(f"http://127.0.0.1:{self.cd_port}/metrics"), timeout=60,
                           what="cd-agent listening")
        return process

    def app_state(self, index: int) -> dict[str, Any]:
        path = AppPaths(self.cd.state / "apps" / f"s{index}", self.cd.logs / f"s{index}").state
        if not path.exists():
            return {"current": None, "quarantined": [], "deploy_in_progress": None}
        with DeployState(path) as state:
            return state.to_json()

    def round(self) -> dict[str, float]:
        """One commit to every app; wait for the runs, then for each release to be served or rolled back."""
        began = time.monotonic()
        numbers = []
        for repo in self.repos:
            self.commits += 1
            failing, broken = self.commits % FAIL_EVERY == 0, self.commits % BROKEN_EVERY == 0
            numbers.append((self.ci_agent.push(
                repo, f"soak commit {self.commits}", test_script=FAILING if failing else PASSING,
                dockerfile=BROKEN if broken else DOCKERFILE,
            ), failing))
        for index, (number, failing) in enumerate(numbers):
            run = self._wait_run(number)
            outcome = (run["status"], run["failed_step"])
            if outcome != (("failed", "test") if failing else ("succeeded", None)):
                self.surprises.append(f"run {number}: {run['status']} at {run['failed_step']}: {run['error']}")
            if run["status"] != "succeeded":
                self.failed_runs += 1
                continue
            self._wait_settled(index, str(run["version"]))
        row = self.sample(time.monotonic() - began)
        if self.kill_every and len(self.rows) % self.kill_every == 0:
            self.kill_one()
        return row

    def _wait_run(self, number: int) -> dict[str, Any]:
        """The run once it has ended, asked twice a second: a look costs the agent CPU, and the soak makes
        hundreds of runs on a machine it shares."""
        def finished() -> dict[str, Any]:
            if not self.ci.process.running():
                raise AssertionError(f"ci-agent exited:\n{self.ci.process.output[-3000:]}")
            run: dict[str, Any] = httpx.get(f"{self.ci_agent.dashboard_url}/runs/{number}", timeout=10).json()
            return run if run["status"] in FINISHED else {}

        return wait_for(finished, timeout=600, interval=0.5, what=f"run {number} to end")

    def _wait_settled(self, index: int, version: str) -> None:
        def settled() -> str:
            if not self.cd.process.running():
                raise AssertionError(f"cd-agent exited:\n{self.cd.process.output[-3000:]}")
            state = self.app_state(index)
            if state["deploy_in_progress"] is not None:
                return ""
            if state["current"] is not None and state["current"]["version"] == version:
                return "deployed"
            return "rolled back" if any(q["version"] == version for q in state["quarantined"]) else ""

        outcome = wait_for(settled, timeout=600, interval=0.5, what=f"app s{index} to settle on {version}")
        if outcome == "rolled back":
            self.rollbacks += 1
        self.wait_alone()

    def wait_alone(self) -> None:
        """Until the deploy processes have ended: the watcher records a release before its deploy process
        has pruned, mailed and exited, and that process's writes count when it is reaped."""
        wait_for(lambda: len(process_tree(self.cd.pid)) == 1, timeout=120, interval=0.2,
                 what="the watcher's deploy processes to end")

    def sample(self, seconds: float) -> dict[str, float]:
        row: dict[str, float] = {
            "runs": self.commits, "round": len(self.rows) + 1,
            "ci_rss_mib": tree_rss_mib(self.ci.pid), "cd_rss_mib": tree_rss_mib(self.cd.pid),
            "ci_fds": tree_fds(self.ci.pid), "cd_fds": tree_fds(self.cd.pid),
            "ci_procs": len(process_tree(self.ci.pid)), "cd_procs": len(process_tree(self.cd.pid)),
            **engine_disk(self.client, self.registry.host),
            # the databases (with their -wal and -shm files) apart from the CI agent's git checkouts
            "ci_state_mib": folder_mib(self.ci.state, "*.sqlite3*"), "cd_state_mib": folder_mib(self.cd.state),
            "ci_work_mib": folder_mib(self.ci.state) - folder_mib(self.ci.state, "*.sqlite3*"),
            "ci_logs_mib": folder_mib(self.ci.logs), "cd_logs_mib": folder_mib(self.cd.logs),
            "ci_written_mib": self.ci.written() / MIB, "cd_written_mib": self.cd.written() / MIB,
            "ci_life": self.ci.life, "cd_life": self.cd.life,
            "failed_runs": self.failed_runs, "rollbacks": self.rollbacks, "seconds": round(seconds, 2),
        }
        self.rows.append(row)
        return row

    def kill_one(self) -> None:
        """SIGKILL CI and CD in turn (with their children), and start it again."""
        which = "ci" if len(self.kills) % 2 == 0 else "cd"
        self.kills.append((self.commits, which))
        agent = self.ci if which == "ci" else self.cd
        agent.kill()
        agent.process = self._start_ci().process if which == "ci" else self._start_cd()

    def idle(self, seconds: float) -> Idle:
        """Nothing to do for ``seconds``: bytes the agents write meanwhile, and the watcher's polls."""
        self.wait_alone()
        settle_to = cd_polls(self.cd_port) + 2 * self.apps  # every app polled since the last deploy
        self.cd.process.wait_until(lambda: cd_polls(self.cd_port) >= settle_to, timeout=60, what="polls")
        polls, cd_bytes, ci_bytes = cd_polls(self.cd_port), self.cd.written(), self.ci.written()
        time.sleep(seconds)  # idle means idle: the measurement is what happens while nothing is asked
        # written first: a request to the listener is not idleness (see requested below)
        cd_bytes, ci_bytes = self.cd.written() - cd_bytes, self.ci.written() - ci_bytes
        idle = Idle(seconds, cd_polls(self.cd_port) - polls, cd_bytes, ci_bytes)
        idle.metrics_bytes = self.requested("/metrics")
        idle.page_bytes = self.requested("/")
        return idle

    def requested(self, path: str, times: int = 5) -> float:
        """Bytes the watcher writes per GET of ``path`` on its listener (a scrape, a look at the status page)."""
        before = self.cd.written()
        for _ in range(times):
            httpx.get(f"http://127.0.0.1:{self.cd_port}{path}", timeout=10).raise_for_status()
        return (self.cd.written() - before) / times

    def close(self) -> None:
        for agent in (self.ci, self.cd):
            agent.process.stop()
        self.registry.stop()
        # listed sparse (no inspect per image): an image someone else removes meanwhile cannot fail it
        for image in self.client.api.images():
            self.janitor.images.update(tag for tag in image.get("RepoTags") or [] if tag.startswith(self.registry.host))
        self.janitor.cleanup()
        self.client.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def soak(apps: int, kill_every: int = 0) -> Iterator[Soak]:
    """A running soak in throw-away folders (state on the disk, consoles on tmpfs); removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch, \
            tempfile.TemporaryDirectory(prefix="soak-console-", dir="/dev/shm") as console:
        running = Soak(Path(scratch), Path(console), apps, kill_every)
        try:
            yield running
        finally:
            running.close()


@dataclass(frozen=True)
class Trend:
    metric: str
    slope: float  # per run
    span: int  # runs measured
    mean: float

    @property
    def change(self) -> float:
        return self.slope * self.span

    def flat(self, tolerance: float) -> bool:
        return abs(self.change) <= tolerance


def trend(rows: Sequence[dict[str, float]], metric: str, warm_up: int, rewarm: int = 0) -> Trend | None:
    """Least-squares slope of ``metric`` over the run count, fitted within each agent's life (CI's for
    ``ci_*``, CD's for ``cd_*``, the soak's otherwise), so a restart's new level is not read as a trend;
    the first ``warm_up`` runs of the soak and the first ``rewarm`` of each later life are left out.
    None when too few samples are left."""
    life = f"{metric[:2]}_life" if metric[:3] in ("ci_", "cd_") else None
    lives: dict[float, list[tuple[float, float]]] = {}
    for row in rows:
        lives.setdefault(row[life] if life else 0, []).append((row["runs"], row[metric]))
    numerator = denominator = 0.0
    measured: list[float] = []
    for number, points in enumerate(lives.values()):
        kept = [(x, y) for x, y in points if (x > warm_up if number == 0 else x - points[0][0] >= rewarm)]
        if len(kept) < 2:
            continue
        mean_x = sum(x for x, _ in kept) / len(kept)
        mean_y = sum(y for _, y in kept) / len(kept)
        numerator += sum((x - mean_x) * (y - mean_y) for x, y in kept)
        denominator += sum((x - mean_x) ** 2 for x, _ in kept)
        measured.extend(y for _, y in kept)
    if not denominator:
        return None
    span = int(rows[-1]["runs"] - warm_up)
    return Trend(metric, numerator / denominator, span, sum(measured) / len(measured))


def summary(rows: Sequence[dict[str, float]], warm_up: int, idle: Idle | None, apps: int) -> list[str]:
    lines = [f"{int(rows[-1]['runs'])} runs over {apps} apps in {len(rows)} rounds; "
             f"{int(rows[-1]['failed_runs'])} failed runs, {int(rows[-1]['rollbacks'])} rollbacks, "
             f"{int(rows[-1]['ci_life']) - 1 + int(rows[-1]['cd_life']) - 1} kills; warm-up {warm_up} runs",
             f"{'metric':18} {'mean':>9} {'slope/100 runs':>15} {'change':>9} {'tolerance':>9}  flat"]
    rewarm = REWARM_PER_APP * apps
    for metric, tolerance in TOLERANCES.items():
        found = trend(rows, metric, warm_up, rewarm)
        if found is None:
            lines.append(f"{metric:18} too few samples after the warm-up")
            continue
        lines.append(f"{metric:18} {found.mean:9.2f} {found.slope * 100:15.3f} {found.change:9.2f} {tolerance:9.2f}  "
                     f"{'yes' if found.flat(tolerance) else 'NO'}")
    for metric in ("ci_written_mib", "cd_written_mib"):
        found = trend(rows, metric, warm_up, rewarm)
        if found is not None:
            lines.append(f"{metric:18} {found.slope * 1024:9.1f} KiB written per run after warm-up")
    if idle is None:
        return lines
    hourly = idle.per_poll * 3600 / CD_DEFAULT_INTERVAL * apps
    lines.append(f"idle {idle.seconds:g} s: cd-agent {idle.cd_bytes} B in {idle.polls} polls = {idle.per_poll:.0f} B "
                 f"per idle poll, {hourly:.0f} B per idle hour ({apps} apps, 60 s polls); ci-agent {idle.ci_bytes} B")
    lines.append(f"cd-agent listener: {idle.metrics_bytes:.0f} B written per GET /metrics, {idle.page_bytes:.0f} B per "
                 "GET / (the status page)")
    return lines


def write_csv(rows: Sequence[dict[str, float]], path: Path) -> None:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as source:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(source)]


def kills_of(rows: Sequence[dict[str, float]]) -> list[tuple[float, str]]:
    """(runs, agent) of each kill: a new life starts in the row after the kill."""
    return [
        (before["runs"], agent)
        for before, after in zip(rows, rows[1:], strict=False)
        for agent in ("ci", "cd")
        if after[f"{agent}_life"] > before[f"{agent}_life"]
    ]


def plot(rows: Sequence[dict[str, float]], warm_up: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("RSS of the process tree (MiB)", ("ci_rss_mib", "cd_rss_mib")),
        ("open file descriptors", ("ci_fds", "cd_fds")),
        ("engine disk (MiB): the soak's images, build cache", ("soak_images_mib", "build_cache_mib")),
        ("state databases, checkouts, LOG_DIR (MiB)",
         ("ci_state_mib", "cd_state_mib", "ci_work_mib", "ci_logs_mib", "cd_logs_mib")),
        ("written to storage (MiB, cumulative)", ("ci_written_mib", "cd_written_mib")),
        ("images of the soak on the engine", ("soak_images",)),
    )
    figure, axes = plt.subplots(3, 2, figsize=(10, 9), sharex=True)
    runs = [row["runs"] for row in rows]
    for axis, (title, metrics) in zip(axes.flat, panels, strict=True):
        for metric in metrics:
            axis.plot(runs, [row[metric] for row in rows], label=metric, linewidth=1)
        for at, which in kills_of(rows):
            axis.axvline(at, color="red" if which == "ci" else "purple", alpha=0.25, linewidth=1)
        axis.axvspan(0, warm_up, color="grey", alpha=0.1)
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=7)
        axis.set_ylim(bottom=0)
    for axis in axes[-1]:
        axis.set_xlabel("CI runs")
    figure.suptitle("bench.soak: grey = warm-up, red / purple lines = ci-agent / cd-agent SIGKILLed", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=72)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300, help="CI runs in all (one per app per round)")
    parser.add_argument("--apps", type=int, default=3, help="apps (repositories) the agents serve")
    parser.add_argument("--out", type=Path, default=Path("soak-out"), help="folder for soak.csv, soak.png, summary")
    parser.add_argument("--warm-up", type=int, default=None, help="runs left out of the fit (default runs / 5)")
    parser.add_argument("--kill-every", type=int, default=25, help="rounds between kills (0: none)")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idleness measured at the end")
    parser.add_argument("--replot", type=Path, metavar="CSV",
                        help="no soak: the summary and plot of an earlier soak.csv (without the idle line)")
    args = parser.parse_args()
    if args.replot is not None:
        rows = read_csv(args.replot)
        warm_up = int(rows[-1]["runs"]) // 5 if args.warm_up is None else args.warm_up
        apps = int(rows[0]["runs"])
        print("\n".join(summary(rows, warm_up, None, apps)))
        plot(rows, warm_up, args.replot.with_suffix(".png"))
        return 0
    if shutil.which("docker-registry") is None and not Path("/usr/bin/docker-registry").exists():
        parser.error("needs docker-registry (apt-get install docker-registry)")
    warm_up = args.runs // 5 if args.warm_up is None else args.warm_up
    # SIGTERM (and SIGINT, which a background job ignores) end the soak through its clean-up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.out.mkdir(parents=True, exist_ok=True)
    reported = 0
    with soak(args.apps, args.kill_every) as running:
        while running.commits < args.runs:
            row = running.round()
            print(" ".join(f"{key}={row[key]:.1f}" for key in COLUMNS), flush=True)
            print("\n".join(running.surprises[reported:]), end="\n" if running.surprises[reported:] else "")
            reported = len(running.surprises)
            write_csv(running.rows, args.out / "soak.csv")
        idle = running.idle(args.idle)
        rows = running.rows
    lines = summary(rows, warm_up, idle, args.apps)
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, warm_up, args.out / "soak.png")
    print(f"wrote {args.out / 'soak.csv'}, {args.out / 'soak.png'}, {args.out / 'summary.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
