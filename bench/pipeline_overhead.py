"""A pipeline run's fixed overhead: ``ci-agent run --ref main`` against the same steps by hand.

    python -m bench.pipeline_overhead             # 7 rounds, alternating
    python -m bench.pipeline_overhead --rounds 15

The app is the tests' trivial one (``FROM scratch`` + Debian's static busybox, a ``files/`` folder, a
host test script), in a local bare git repository, released to a local ``docker-registry``. Every
run gets a commit of its own (so no build finds another's layers in the cache), and each round runs
the variants in a rotated order:

* **by hand** — one bash script: ``git fetch`` of the branch + ``checkout`` + ``clean`` in a kept work
  folder, the test command, ``docker build`` with the four OCI labels as ``--label`` flags and both tags,
  ``docker push`` of the version and of ``latest``;
* **by hand, one LABEL line** — the same, the labels appended to a copy of the Dockerfile as one
  ``LABEL`` line (what the agent does; the legacy builder makes one container step per ``--label``);
* **ci-agent run** — ``ci-agent run --ref main`` as a whole process (``CI_TEST_RUNNER=host``), and its
  steps as its own run log times them (``step X started`` … ``step X finished``, millisecond stamps);
* **python + the run's imports** — the floor under any Python agent: start, import, exit.

Each script/process is timed from spawn to exit, and its CPU time (user + system, with every child it
waited for; dockerd's own work is in neither) is read from ``getrusage``: on a loaded machine the
wall-clock numbers stretch, the CPU seconds much less. The 1-minute load average is printed beside
every row (the machine is shared). ``open_world``, ``time_by_hand``, ``time_ci_agent_run`` and ``step_spans``
are importable (``bench/peers/``): ``with open_world() as world:``, then ``world.new_commit()`` before each
timed run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.support.docker_env import BUSYBOX, busybox_dockerfile
from tests.support.git_repos import GitProject, make_git_project
from tests.support.registry_server import RegistryServer, start_registry

REPO = Path(__file__).resolve().parents[1]
STEPS = ("checkout", "test", "build", "push")
TEST_COMMAND = "sh test.sh"
DOCKERFILE = busybox_dockerfile(cmd=["httpd", "-f", "-p", "8080", "-h", "/www"])
LABELS = ("revision", "source", "version", "created")

# The by-hand pipeline: what a webhook + shell script setup runs for one push. Stamps with bash's own
# clock ($EPOCHREALTIME), so timing a step spawns nothing.
HAND_SCRIPT = r"""
set -eu
stamp() { printf '%s %s\n' "$1" "$EPOCHREALTIME" >> "$STAMPS"; }
stamp checkout
[ -d "$WORK/.git" ] || git init -q "$WORK"
cd "$WORK"
git fetch -q --no-tags "$REPO_URL" "refs/heads/$BRANCH"
git checkout -q --force --detach FETCH_HEAD
git clean -ffdxq
SHA=$(git rev-parse HEAD)
stamp test
$TEST_COMMAND
stamp build
CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
if [ "$LABEL_STYLE" = flags ]; then
  docker build -q -t "$IMAGE:$VERSION" -t "$IMAGE:latest" \
    --label "org.opencontainers.image.revision=$SHA" --label "org.opencontainers.image.source=$REPO_URL" \
    --label "org.opencontainers.image.version=$VERSION" --label "org.opencontainers.image.created=$CREATED" \
    . > /dev/null
else
  DOCKERFILE=$(mktemp)
  P=org.opencontainers.image
  { cat Dockerfile; printf 'LABEL "%s.revision"="%s" "%s.source"="%s" "%s.version"="%s" "%s.created"="%s"\n' \
      "$P" "$SHA" "$P" "$REPO_URL" "$P" "$VERSION" "$P" "$CREATED"; } > "$DOCKERFILE"
  docker build -q -f "$DOCKERFILE" -t "$IMAGE:$VERSION" -t "$IMAGE:latest" . > /dev/null
  rm -f "$DOCKERFILE"
fi
stamp push
docker push -q "$IMAGE:$VERSION" > /dev/null
docker push -q "$IMAGE:latest" > /dev/null
stamp end
"""

_LOG_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}) \| \w+\s*\| (.*)$")
_STEP_EVENT = re.compile(r"^step (\w+) (started|finished|failed)")


@dataclass
class Timing:
    """One measured run: whole-process seconds, seconds per step, and the 1-minute load average."""

    total: float
    steps: dict[str, float]
    load: float
    before_steps: float = 0.0  # spawn -> first step started
    after_steps: float = 0.0  # last step finished -> exit
    cpu: float = 0.0  # user + system seconds of the process tree (dockerd's work not included): barely load-bound


@dataclass
class World:
    """A git repository with the trivial app, a registry, and where each variant keeps its files."""

    root: Path
    registry: RegistryServer
    project: GitProject
    ci_image: str
    hand_image: str
    ci_env: dict[str, str]
    ci_agent: list[str]
    rounds: int = 0
    hand_version: int = 0
    images: set[str] = field(default_factory=set)

    def new_commit(self) -> str:
        """A fresh commit on ``main`` (pushed): every run builds content no earlier build saw."""
        self.rounds += 1
        sha = self.project.commit({"files/round.txt": f"{self.rounds} {uuid.uuid4().hex}\n"}, f"round {self.rounds}")
        self.project.push()
        return sha


def load() -> float:
    return os.getloadavg()[0]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _agent_command() -> list[str]:
    script = Path(sys.executable).with_name("ci-agent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ci_agent"]


@contextlib.contextmanager
def open_world(root: Path | None = None) -> Iterator[World]:
    """Set up the repository (first commit pushed), a registry and the agent's settings; clean up after."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pipeline-overhead-")))
        registry = start_registry(root / "registry")
        stack.callback(registry.stop)
        (root / "git").mkdir()
        project = make_git_project(root / "git")
        project.commit(
            {
                "Dockerfile": DOCKERFILE,
                "busybox": BUSYBOX.read_bytes(),
                "files/www/index.html": "<p>hello</p>\n",
                "test.sh": "grep -q hello files/www/index.html\n",
            },
            "trivial app",
            executable=("busybox",),
        )
        project.push()
        name = uuid.uuid4().hex[:8]
        prefixes = ("CI_", "SMTP_", "NOTIFY_", "REGISTRY_", "LOG_", "STATE_DIR")
        environ = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
        world = World(
            root=root, registry=registry, project=project,
            ci_image=f"{registry.host}/bench/pipe-{name}", hand_image=f"{registry.host}/bench/hand-{name}",
            ci_env={
                **environ, "CI_REPO_URL": project.url, "CI_BRANCH": "main", "CI_IMAGE": "",
                "CI_ALLOW_UNSIGNED": "true", "CI_TEST_RUNNER": "host", "CI_TEST_COMMAND": TEST_COMMAND,
                "STATE_DIR": str(root / "ci-state"), "LOG_DIR": str(root / "ci-logs"),
            },
            ci_agent=_agent_command(),
        )
        world.ci_env["CI_IMAGE"] = world.ci_image
        stack.callback(_remove_images, world)
        yield world


def _remove_images(world: World) -> None:
    for image in (world.ci_image, world.hand_image):
        listed = subprocess.run(
            ["docker", "image", "ls", "-q", "--no-trunc", image], capture_output=True, text=True, check=False
        ).stdout.split()
        for image_id in set(listed):
            subprocess.run(["docker", "rmi", "-f", image_id], capture_output=True, check=False)


def time_by_hand(world: World, *, label_style: str = "flags") -> Timing:
    """Run the by-hand script once on the branch head; ``label_style`` ``flags`` (``--label``) or ``line``."""
    world.hand_version += 1
    stamps = world.root / "hand-stamps"
    stamps.unlink(missing_ok=True)
    previous = _image_id(f"{world.hand_image}:latest")
    environ = {
        **os.environ, "STAMPS": str(stamps), "WORK": str(world.root / f"hand-{label_style}"),
        "REPO_URL": world.project.url, "BRANCH": "main", "TEST_COMMAND": TEST_COMMAND,
        "IMAGE": world.hand_image, "VERSION": f"0.0.{world.hand_version}", "LABEL_STYLE": label_style,
    }
    spawned_load = load()
    cpu = children_cpu()
    began = time.time()
    completed = subprocess.run(["bash", "-c", HAND_SCRIPT], env=environ, capture_output=True, text=True, check=False)
    ended = time.time()
    cpu = children_cpu() - cpu
    if completed.returncode != 0:
        raise RuntimeError(f"the by-hand script failed ({completed.returncode}): {completed.stderr[-2000:]}")
    marks = [(name, float(value.replace(",", "."))) for name, value in
             (line.split() for line in stamps.read_text().splitlines())]
    steps = {name: marks[i + 1][1] - at for i, (name, at) in enumerate(marks[:-1])}
    # What the agent does too: only `latest` stays locally.
    subprocess.run(["docker", "rmi", f"{world.hand_image}:0.0.{world.hand_version}"], capture_output=True, check=False)
    if previous is not None and previous != _image_id(f"{world.hand_image}:latest"):
        subprocess.run(["docker", "rmi", previous], capture_output=True, check=False)
    return Timing(total=ended - began, steps=steps, load=spawned_load, before_steps=marks[0][1] - began,
                  after_steps=ended - marks[-1][1], cpu=cpu)


def _image_id(reference: str) -> str | None:
    completed = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", reference], capture_output=True, text=True, check=False
    )
    return completed.stdout.strip() or None


def time_ci_agent_run(world: World, *, source: Path | None = None) -> Timing:
    """Run ``ci-agent run --ref main`` once as a whole process; its steps from its run log.

    ``source``: run the ``ci_agent`` and ``shared`` packages of that folder instead (e.g. an older
    version, ``git archive main ci_agent shared | tar -x -C DIR``), with this environment's dependencies.
    """
    logs = world.root / "ci-logs"
    before = set(logs.glob("*.log")) if logs.is_dir() else set()
    command, environ = world.ci_agent, world.ci_env
    if source is not None:
        command, environ = [sys.executable, "-m", "ci_agent"], {**environ, "PYTHONPATH": str(source)}
    spawned_load = load()
    cpu = children_cpu()
    began = time.time()
    completed = subprocess.run(
        [*command, "run", "--ref", "main"], env=environ, cwd=world.root, capture_output=True, text=True, check=False,
    )
    ended = time.time()
    cpu = children_cpu() - cpu
    if completed.returncode != 0 or "succeeded" not in completed.stdout:
        raise RuntimeError(f"ci-agent run failed ({completed.returncode}): {completed.stdout}{completed.stderr}")
    (log,) = set(logs.glob("*.log")) - before
    spans = step_spans(log.read_text())
    steps = {step: ended_at - began_at for step, (began_at, ended_at) in spans.items()}
    first = min(began_at for began_at, _ in spans.values())
    last = max(ended_at for _, ended_at in spans.values())
    return Timing(total=ended - began, steps=steps, load=spawned_load, before_steps=first - began,
                  after_steps=ended - last, cpu=cpu)


def step_spans(log: str) -> dict[str, tuple[float, float]]:
    """Each finished step of a run log: (started, finished) as epoch seconds, from its UTC millisecond stamps."""
    started: dict[str, float] = {}
    spans: dict[str, tuple[float, float]] = {}
    for line in log.splitlines():
        match = _LOG_LINE.match(line)
        event = _STEP_EVENT.match(match[2]) if match else None
        if match is None or event is None:
            continue
        at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
        if event[2] == "started":
            started[event[1]] = at
        elif event[2] == "finished" and event[1] in started:
            spans[event[1]] = (started[event[1]], at)
    return spans


def _measure(world: World, name: str, measure: Callable[[World], Timing], attempts: int = 3) -> Timing:
    # dockerd is shared: another user's `docker image prune` can take a cached layer away mid-build.
    for attempt in range(1, attempts + 1):
        world.new_commit()
        try:
            return measure(world)
        except RuntimeError as exc:
            if attempt == attempts:
                raise
            print(f"{name}: {str(exc).strip()[-300:]}; measuring again", file=sys.stderr)
    raise AssertionError("unreachable")


# What every `ci-agent run` pays before and besides its work: the interpreter and the modules a run loads.
IMPORTS = (
    "import gc, docker; from ci_agent import cli, pipeline, commit_status; from shared import notify; gc.freeze()"
)


def time_imports(world: World) -> Timing:
    """The floor: start Python, import what ``ci-agent run`` imports (the Docker SDK too), exit."""
    spawned_load = load()
    cpu = children_cpu()
    began = time.time()
    subprocess.run([sys.executable, "-c", IMPORTS], env=world.ci_env, cwd=world.root, check=True)
    return Timing(total=time.time() - began, steps={}, load=spawned_load, cpu=children_cpu() - cpu)


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):6.3f}" if values else "     -"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="work in this (empty) folder and leave it behind")
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="also time the ci_agent/shared packages in DIR (before/after in the same run)")
    args = parser.parse_args()
    if shutil.which("docker") is None:
        print("needs the docker CLI (for the by-hand script)", file=sys.stderr)
        return 2
    variants: dict[str, Callable[[World], Timing]] = {
        "by hand (--label flags)": lambda world: time_by_hand(world, label_style="flags"),
        "by hand (one LABEL line)": lambda world: time_by_hand(world, label_style="line"),
        "ci-agent run --ref main": time_ci_agent_run,
    }
    if args.compare is not None:
        variants[f"ci-agent run ({args.compare.name})"] = lambda world: time_ci_agent_run(world, source=args.compare)
    variants["python + the run's imports"] = time_imports
    results: dict[str, list[Timing]] = {name: [] for name in variants}
    with open_world(args.keep) as world:
        for name, measure in variants.items():  # warm-up: clones, first builds, the registry's repositories
            _measure(world, name, measure)
        names = list(variants)
        for round_number in range(args.rounds):
            order = names[round_number % len(names):] + names[:round_number % len(names)]
            for name in order:
                results[name].append(_measure(world, name, variants[name]))
    print(f"{args.rounds} rounds, medians in seconds; load = 1-minute load average ({os.cpu_count()} cores)")
    print(f"{'':26} {'total':>6} {'before':>6} " + " ".join(f"{step:>8}" for step in STEPS)
          + f" {'after':>6} {'CPU':>6} {'load':>5}")
    for name, timings in results.items():
        print(f"{name:26} {_median([t.total for t in timings])} {_median([t.before_steps for t in timings])} "
              + " ".join(f"  {_median([t.steps.get(step, 0.0) for t in timings])}" for step in STEPS)
              + f" {_median([t.after_steps for t in timings])} {_median([t.cpu for t in timings])}"
              + f" {statistics.median(t.load for t in timings):5.2f}")
    for agent_name in names[2:-1]:
        agent = statistics.median(t.total for t in results[agent_name])
        agent_cpu = statistics.median(t.cpu for t in results[agent_name])
        for name in names[:2]:
            overhead = agent - statistics.median(t.total for t in results[name])
            cpu = agent_cpu - statistics.median(t.cpu for t in results[name])
            print(f"overhead of {agent_name} over {name}: {overhead:+.3f} s ({cpu:+.3f} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
