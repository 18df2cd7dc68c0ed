"""The test, build and push steps' effect boundary: the Docker SDK, and a subprocess for host tests.

``DockerGateway`` is the only place the CI agent talks to dockerd. Every ``docker.errors`` /
``requests`` error becomes ``StepFailed(step, message)`` here; the build and push streams are read
for their ``error`` / ``errorDetail`` entries, because dockerd reports those failures inside an HTTP
200 stream. Output lines go to a callback (the run log). Registry credentials travel only in
``auth_config`` and never reach a log line or a message.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from loguru import logger
from pydantic import SecretStr

from ci_agent.disk_budget import (
    OWNER_LABEL,
    TEST_CONTAINER_PREFIX,
    TEST_CONTAINER_ROLE,
    EngineContainer,
    EngineDiskState,
    EngineImage,
)
from ci_agent.errors import Step, StepFailed
from ci_agent.label_line import with_labels
from shared.platforms import Platform, engine_platform, platform

OutputSink = Callable[[str], None]


def _docker() -> Any:
    # Imported on first use: the Docker SDK (with requests and urllib3) is a sixth of `ci-agent run`'s
    # imports, and DockerGateway.prepare() loads it in the background while checkout and tests run.
    import docker

    return docker


def _sdk_errors() -> tuple[type[BaseException], ...]:
    """What the SDK lets through when dockerd goes away mid-call: its own errors, requests' (connecting)
    and urllib3's (a response stream cut short, e.g. a build whose daemon stopped)."""
    import requests
    import urllib3

    return (_docker().errors.DockerException, requests.exceptions.RequestException, urllib3.exceptions.HTTPError)

def _connect_errors() -> tuple[type[BaseException], ...]:
    """What connecting to an engine raises when it cannot be reached: the SDK's errors, and for ssh://
    paramiko's (refused, unknown host key, no key accepted) and plain OSError (no route, no such host)."""
    errors: tuple[type[BaseException], ...] = (*_sdk_errors(), OSError)
    try:
        import paramiko
    except ImportError:
        return errors
    return (*errors, paramiko.SSHException)


def _reason(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


_STAGE = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*\S+\s+AS\s+(?P<name>\S+)\s*$", re.IGNORECASE | re.MULTILINE)


class _Dockerfile:
    """A generated Dockerfile's path (or None: the checkout's own), deleted on exit."""

    def __init__(self, name: str | None) -> None:
        self.name = name

    def __enter__(self) -> _Dockerfile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.name is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.name)


def _discard(line: str) -> None:
    del line


def has_stage(dockerfile: str, name: str) -> bool:
    """Whether the Dockerfile text has a ``FROM ... AS <name>`` stage (stage names are case-insensitive)."""
    return any(match["name"].lower() == name.lower() for match in _STAGE.finditer(dockerfile))


def split_tag(reference: str) -> tuple[str, str]:
    """``"host:5000/o/app:1.2.3"`` -> ``("host:5000/o/app", "1.2.3")``; the tag must be present."""
    repository, sep, tag = reference.rpartition(":")
    if not sep or "/" in tag or not repository:
        raise ValueError(f"image reference {reference!r} has no tag")
    return repository, tag


class _LineSplitter:
    """Turns arbitrary chunks of bytes into whole lines for the output callback."""

    def __init__(self, sink: OutputSink) -> None:
        self.sink = sink
        self.pending = ""

    def feed(self, chunk: str) -> None:
        self.pending += chunk.replace("\r\n", "\n").replace("\r", "\n")
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.sink(line)

    def close(self) -> None:
        if self.pending:
            self.sink(self.pending)
            self.pending = ""


_IMAGE_ID = re.compile(r"(sha256:)?[0-9a-f]{12,64}")
_STEP_FROM = re.compile(r"^Step \d+/\d+ : FROM ", re.IGNORECASE)
_STEP_RESULT = re.compile(r"^ ---> ([0-9a-f]{12,64})$")


class _StageTracker:
    """Reads the classic builder's output for the image each finished stage ended with."""

    def __init__(self) -> None:
        self.last_result: str | None = None
        self.stage_results: list[str] = []

    def see(self, line: str) -> None:
        if _STEP_FROM.match(line) and self.last_result is not None:
            self.stage_results.append(self.last_result)
            self.last_result = None
        elif match := _STEP_RESULT.match(line):
            self.last_result = match[1]

    def finished_stages(self) -> list[str]:
        return list(self.stage_results)


# What the classic builder says when an image it took from its cache is gone by the next step (removed by
# another process); a base image that cannot be found is named, never an image id. The daemon quotes the id when
# the build call itself fails (`unable to find image "sha256:…"`), the stream does not.
_LOST_CACHE = re.compile(r"unknown parent image ID|unable to find image \"?sha256:|No such image: sha256:")


def _stream_error(chunk: Mapping[str, Any]) -> str | None:
    if "errorDetail" in chunk:
        detail = chunk["errorDetail"]
        if isinstance(detail, Mapping) and detail.get("message"):
            return str(detail["message"])
    if "error" in chunk:
        return str(chunk["error"])
    return None


class DockerGateway:
    """Build, test-run and push images through dockerd.

    ``client`` defaults to ``docker.from_env(version="auto")``; ``username``/``password`` are the
    registry credentials (``REGISTRY_USERNAME``/``REGISTRY_PASSWORD``) sent with each push.
    ``build_timeout`` bounds how long a build may stay silent.

    ``build_host`` (``CI_BUILD_DOCKER_HOST``: ``unix://``, ``tcp://`` with ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``
    as for the docker CLI, ``ssh://user@host`` through paramiko and ``~/.ssh``) is the engine every run builds,
    tests and pushes on, chosen again at each run's start; when it cannot be reached the run fails, or with
    ``fallback_local`` (``CI_BUILD_FALLBACK_LOCAL``) that run uses the local engine. Unset: the local engine.
    ``table`` is the repository's ``[repos.NAME]`` when those are its keys ``build_docker_host`` /
    ``build_fallback_local`` (a repos file), so the messages name what the user wrote.
    """

    def __init__(
        self,
        client: Any | None = None,
        *,
        username: str | None = None,
        password: SecretStr | None = None,
        build_timeout: float = 1800.0,
        build_host: str | None = None,
        fallback_local: bool = False,
        table: str | None = None,
    ) -> None:
        # Connected on first use, not here: an agent started while dockerd is down (boot order, a
        # restart) still starts and answers webhooks; its runs fail at their first Docker call with
        # this message, and the next run connects again.
        self._client = client
        self._connecting = threading.Lock()
        self._username = username
        self._password = password
        self.build_timeout = build_timeout
        self._build_host = build_host
        self._fallback_local = fallback_local
        self._host_setting, self._fallback_setting = (
            (f"{table} build_docker_host", f"{table} build_fallback_local = true") if table is not None
            else ("CI_BUILD_DOCKER_HOST", "CI_BUILD_FALLBACK_LOCAL=true")
        )
        self._engine = "the local Docker engine"  # what this run builds on, for its log

    @property
    def client(self) -> Any:
        with self._connecting:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Any:
        docker = _docker()
        if self._build_host is not None:
            settings = docker.utils.kwargs_from_env(environment={**os.environ, "DOCKER_HOST": self._build_host})
            try:
                if self._build_host.startswith("unix://") and not os.path.exists(self._build_host[7:]):
                    # Looked at first: docker-py leaks the socket of a failed unix connect.
                    raise FileNotFoundError(f"no socket at {self._build_host[7:]}")
                # A version negotiation that fails leaks its socket (docker-py): ask with a throwaway
                # client of a fixed version that is always closed, then let the real one negotiate.
                probe = docker.APIClient(version="1.24", timeout=30, **settings)
                try:
                    probe.ping()
                finally:
                    probe.close()
                client = docker.DockerClient(**settings, version="auto")
            except _connect_errors() as exc:
                reason = f"cannot reach the build engine {self._build_host} ({self._host_setting}): {_reason(exc)}"
                if not self._fallback_local:
                    raise StepFailed("build", reason) from exc
                logger.warning("{}; building on the local engine ({})", reason, self._fallback_setting)
                self._engine = f"the local Docker engine ({reason}; {self._fallback_setting})"
            else:
                self._engine = f"the build engine {self._build_host}"
                return client
        try:
            return docker.from_env(version="auto")
        except docker.errors.DockerException as exc:
            raise StepFailed("build", f"cannot reach the Docker Engine: {exc}") from exc

    def engine(self) -> str:
        """``the build engine ssh://ci@buildbox (Docker 24.0.7, linux/amd64)``: connects if needed (raising
        ``StepFailed`` when it cannot), for the run's log."""
        with self._errors("build", "docker version"):
            version = self.client.version()
        return f"{self._engine} (Docker {version.get('Version', '?')}, {version.get('Os')}/{version.get('Arch')})"

    def prepare(self) -> None:
        """Import the SDK and connect in the background, for a run about to start (checkout and host
        tests wait on git and subprocesses meanwhile); a failure is left for the first real call to report.
        With a build engine, each run connects anew: a run after one that fell back tries that engine again."""
        if self._build_host is not None:
            with self._connecting:
                if self._client is not None:
                    with contextlib.suppress(*_sdk_errors()):
                        self._client.close()
                    self._client = None
        if self._client is not None:
            return

        def connect() -> None:
            with contextlib.suppress(StepFailed):
                self.client  # noqa: B018 - the property connects

        threading.Thread(target=connect, name="ci-docker-connect", daemon=True).start()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def data_root(self) -> str | None:
        """Where the engine keeps its data (``docker info`` ``DockerRootDir``), for ``DISK_MIN_FREE``."""
        try:
            root = self.client.info().get("DockerRootDir")
        except StepFailed:
            raise
        except Exception as exc:  # the SDK's errors and requests' connection errors alike: one boundary
            raise StepFailed("disk", f"docker info: {exc}") from exc
        return str(root) if root else None

    def build(
        self,
        context_dir: Path,
        tags: Sequence[str],
        *,
        labels: Mapping[str, str] | None = None,
        target: str | None = None,
        buildargs: Mapping[str, str] | None = None,
        on_output: OutputSink = _discard,
        step: Step = "build",
        platform: str | None = None,
        cache_from: Sequence[str] = (),
    ) -> str:
        """Build ``context_dir``'s Dockerfile, tag it with every ``name:tag`` in ``tags``; return the image id.

        ``platform`` (``linux/arm64``) builds for another platform, under QEMU user emulation where it is foreign.
        ``cache_from``: only layers of these images (and their parents) are taken from the cache.
        """
        if not tags:
            raise ValueError("build needs at least one tag")
        try:
            return self._build_once(context_dir, tags, labels, target, buildargs, on_output, step, platform, cache_from)
        except StepFailed as exc:
            if not _LOST_CACHE.search(exc.message):
                raise
            # The cached image a step starts from was deleted under the build: the CD agent on the same engine
            # removing an old release takes that release's untagged parents with it. Once more finds no cache.
            on_output(f"the engine lost a cached image during the build ({exc.message}); building once more")
            return self._build_once(context_dir, tags, labels, target, buildargs, on_output, step, platform, cache_from)

    def _build_once(
        self,
        context_dir: Path,
        tags: Sequence[str],
        labels: Mapping[str, str] | None,
        target: str | None,
        buildargs: Mapping[str, str] | None,
        on_output: OutputSink,
        step: Step,
        platform: str | None,
        cache_from: Sequence[str],
    ) -> str:
        image_id: str | None = None
        # Every image CI builds says so, and for which repository: CI_DISK_BUDGET prunes only those.
        labels = {**(labels or {}), OWNER_LABEL: split_tag(tags[0])[0]}
        labels, dockerfile = self._labels_in_dockerfile(context_dir, labels, target)
        with self._errors(step, "docker build"), dockerfile:
            stream: Iterator[dict[str, Any]] = self.client.api.build(
                path=str(context_dir),
                dockerfile=dockerfile.name or None,
                tag=tags[0],
                labels=dict(labels or {}),
                target=target,
                buildargs=dict(buildargs or {}),
                rm=True,
                forcerm=True,
                decode=True,
                timeout=self.build_timeout,
                platform=platform,
                cache_from=list(cache_from) or None,
            )
            stages = _StageTracker()

            def output(line: str) -> None:
                stages.see(line)
                on_output(line)

            lines = _LineSplitter(output)
            error: str | None = None
            # Read to the end even after an error: the SDK closes the connection only at the end of the stream.
            for chunk in stream:
                error = error or _stream_error(chunk)
                if "stream" in chunk:
                    lines.feed(str(chunk["stream"]))
                elif "status" in chunk:
                    on_output(str(chunk["status"]))
                aux = chunk.get("aux")
                if isinstance(aux, Mapping) and "ID" in aux:
                    image_id = str(aux["ID"])
            lines.close()
            if error is not None:
                raise StepFailed(step, f"docker build failed: {error.strip()}")
            if image_id is None:
                image_id = str(self.client.api.inspect_image(tags[0])["Id"])
            for reference in tags[1:]:
                repository, tag = split_tag(reference)
                self.client.api.tag(image_id, repository, tag, force=True)
        self._remove_stage_leftovers(stages.finished_stages(), keep=image_id)
        return image_id

    @staticmethod
    def _labels_in_dockerfile(
        context_dir: Path, labels: Mapping[str, str] | None, target: str | None
    ) -> tuple[Mapping[str, str] | None, _Dockerfile]:
        """Labels left for the API's parameter, and the Dockerfile to build (see ci_agent/label_line.py).

        Only without a target: an appended line lands in the last stage, which is then the one built.
        The changed Dockerfile lives outside the checkout; the SDK sends it along with the context.
        """
        original = context_dir / "Dockerfile"
        if not labels or target is not None or not original.is_file():
            return labels, _Dockerfile(None)
        changed = with_labels(original.read_text(encoding="utf-8", errors="surrogateescape"), labels)
        if changed is None:
            return labels, _Dockerfile(None)
        handle, name = tempfile.mkstemp(prefix="picicd-", suffix=".Dockerfile")
        with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape") as file:
            file.write(changed)
        return None, _Dockerfile(name)

    def _remove_stage_leftovers(self, stage_images: Iterable[str], *, keep: str) -> None:
        # The classic builder builds every stage before the target and leaves each one's result
        # behind as an untagged image; on a Pi those pile up. A stage that is the parent of the
        # result (or of anything else) refuses removal, which is what we want.
        for short_id in stage_images:
            if keep.removeprefix("sha256:").startswith(short_id):
                continue
            try:
                if self.client.api.inspect_image(short_id).get("RepoTags"):
                    continue
            except _docker().errors.DockerException:
                continue
            self.remove_image(short_id)

    def run_tests(
        self,
        image: str,
        command: str,
        *,
        timeout: float,
        on_output: OutputSink = _discard,
        name: str | None = None,
        platform: str | None = None,
    ) -> int:
        """Run ``sh -c COMMAND`` in a new container of ``image`` (built for ``platform``); return its exit code.

        The container publishes no ports and is removed afterwards; at ``timeout`` seconds it is
        killed and ``StepFailed("test", ...)`` is raised.
        """
        import requests  # with the SDK, on first use (see _docker)

        container: Any = None
        with self._errors("test", "the test container"):
            try:
                container = self.client.containers.create(
                    image, entrypoint=["sh", "-c"], command=[command], name=name, detach=True,
                    labels={TEST_CONTAINER_ROLE[0]: TEST_CONTAINER_ROLE[1]},
                    **({"platform": platform} if platform else {}),
                )
                container.start()
                reader = threading.Thread(
                    target=self._follow_logs, args=(container, on_output), name="ci-test-logs", daemon=True
                )
                reader.start()
                try:
                    result = container.wait(timeout=timeout)
                except requests.exceptions.RequestException as exc:  # the wait's time limit
                    container.kill()
                    reader.join(timeout=10)
                    raise StepFailed(
                        "test", f"the test command did not finish within {timeout:g}s and was killed"
                    ) from exc
                reader.join(timeout=10)
                return int(result.get("StatusCode", -1))
            finally:
                if container is not None:
                    try:
                        container.remove(force=True, v=True)
                    except _docker().errors.NotFound:
                        pass

    @staticmethod
    def _follow_logs(container: Any, on_output: OutputSink) -> None:
        lines = _LineSplitter(on_output)
        stream: Any = None
        try:
            stream = container.logs(stream=True, follow=True, stdout=True, stderr=True)
            for chunk in stream:
                lines.feed(chunk.decode("utf-8", errors="replace"))
        except _sdk_errors() as exc:
            logger.debug("stopped following the test container's output: {}", exc)
        finally:
            if stream is not None:
                stream.close()
        lines.close()

    def push(self, repository: str, tag: str, *, on_output: OutputSink = _discard) -> str | None:
        """Push ``repository:tag``; returns the manifest digest the engine reported (None if it did not say).
        A failure reported inside the stream is ``StepFailed("push", ...)``."""
        auth: dict[str, str] | None = None
        if self._username and self._password is not None:
            auth = {"username": self._username, "password": self._password.get_secret_value()}
        with self._errors("push", f"docker push {repository}:{tag}"):
            stream: Iterable[dict[str, Any]] = self.client.api.push(
                repository, tag=tag, stream=True, decode=True, auth_config=auth
            )
            error: str | None = None
            digest: str | None = None
            for chunk in stream:
                error = error or _stream_error(chunk)
                aux = chunk.get("aux")
                if isinstance(aux, Mapping) and isinstance(aux.get("Digest"), str):
                    digest = str(aux["Digest"])
                # Progress bars are noise in a log file; the per-layer states and the digest are not.
                if "status" in chunk and not chunk.get("progressDetail"):
                    layer = f"{chunk['id']}: " if chunk.get("id") else ""
                    on_output(f"{layer}{chunk['status']}")
            if error is not None:
                raise StepFailed("push", f"docker push {repository}:{tag} failed: {error.strip()}")
            return digest

    def platform(self) -> Platform:
        """The platform this engine builds for by default (``docker version``'s Os/Arch; for 32-bit arm the
        variant from ``docker info``), as the CD agent reads it."""
        with self._errors("build", "docker version"):
            version = self.client.api.version()
            arch = str(version.get("Arch") or "")
            machine = str(self.client.api.info().get("Architecture") or "") if arch == "arm" else ""
            return engine_platform(str(version.get("Os") or "linux"), arch, machine)

    def image_platform(self, reference: str) -> Platform:
        """The platform an image says it is for (its config's Os, Architecture and Variant)."""
        with self._errors("build", f"docker inspect {reference}"):
            data = self.client.api.inspect_image(reference)
            return platform(str(data.get("Os") or ""), str(data.get("Architecture") or ""),
                            str(data.get("Variant") or ""))

    def image_id(self, reference: str) -> str | None:
        try:
            return str(self.client.api.inspect_image(reference)["Id"])
        except _docker().errors.NotFound:
            return None
        except _sdk_errors() as exc:
            logger.warning("cannot inspect image {}: {}", reference, exc)
            return None

    def image_labels(self, reference: str) -> dict[str, str]:
        with self._errors("build", f"docker inspect {reference}"):
            config = self.client.api.inspect_image(reference).get("Config") or {}
            return dict(config.get("Labels") or {})

    def remove_image(self, reference: str) -> bool:
        """Untag/remove ``reference``; ``False`` when it is gone already or still in use (never raises).

        An image id is removed only when the image has no tag left: the engine would delete an image
        by id together with its one remaining tag, and a tag CI did not remove is someone else's (the
        CD agent's ``NAME:1.2.0`` of the very image CI built, on a Pi that runs both)."""
        ignored: tuple[type[BaseException], ...] = (StepFailed, *_sdk_errors())
        try:
            if _IMAGE_ID.fullmatch(reference) and self.client.api.inspect_image(reference).get("RepoTags"):
                logger.debug("image {} not removed: it has a tag CI did not remove", reference)
                return False
            self.client.api.remove_image(reference)
        except ignored as exc:
            logger.debug("image {} not removed: {}", reference, exc)
            return False
        return True

    def remove_container(self, container_id: str) -> bool:
        """Remove a stopped container with its anonymous volumes; ``False`` when it cannot be (never raises)."""
        ignored: tuple[type[BaseException], ...] = (StepFailed, *_sdk_errors())
        try:
            self.client.api.remove_container(container_id, v=True)
        except ignored as exc:
            logger.debug("container {} not removed: {}", container_id, exc)
            return False
        return True

    def disk_state(self) -> EngineDiskState:
        """What CI_DISK_BUDGET weighs (``ci_agent/disk_budget.py``): the images and containers labelled
        ``pi-cicd.ci.image`` with their history's layers, and the ids of every other image."""
        images: list[EngineImage] = []
        others: set[str] = set()
        with self._errors("build", "reading the engine's images for CI_DISK_BUDGET"):
            for summary in self.client.api.images():
                if OWNER_LABEL not in (summary.get("Labels") or {}):
                    others.add(str(summary["Id"]))
                    continue
                image = self._owned_image(str(summary["Id"]))
                if image is not None:
                    images.append(image)
            containers = [
                EngineContainer(
                    id=str(item["Id"]), name=str((item.get("Names") or ["?"])[0]).lstrip("/"),
                    owner=str((item.get("Labels") or {}).get(OWNER_LABEL, "")),
                    running=item.get("State") in ("running", "restarting", "paused"), size=int(item.get("SizeRw") or 0),
                )
                # A container inherits its image's labels: CD's app containers of CI's images carry OWNER_LABEL too.
                for item in self.client.api.containers(
                    all=True, size=True, filters={"label": "=".join(TEST_CONTAINER_ROLE), "name": TEST_CONTAINER_PREFIX}
                )
                if str((item.get("Names") or [""])[0]).lstrip("/").startswith(TEST_CONTAINER_PREFIX)
            ]
        return EngineDiskState(tuple(images), tuple(containers), frozenset(others))

    def _owned_image(self, image_id: str) -> EngineImage | None:
        try:
            data = self.client.api.inspect_image(image_id)
            history = self.client.api.history(image_id)
        except _docker().errors.NotFound:
            return None  # removed since the listing (another run's cleanup)
        config = data.get("Config") or {}
        last_tagged = (data.get("Metadata") or {}).get("LastTagTime") or ""
        return EngineImage(
            id=image_id, tags=tuple(data.get("RepoTags") or ()), labels=dict(config.get("Labels") or {}),
            last_used=max(_epoch(str(data.get("Created") or "")), _epoch(str(last_tagged))),
            layers=tuple(
                (str(entry["Id"]), int(entry.get("Size") or 0)) for entry in history
                if entry.get("Id") and entry["Id"] != "<missing>"
            ),
        )

    def _errors(self, step: Step, what: str) -> _DockerErrors:
        return _DockerErrors(step, what, self._build_host)



def _epoch(text: str) -> float:
    """Docker's ``2026-12-07T20:33:21.745440547Z`` as seconds since the epoch (0 for none or the zero time)."""
    from datetime import datetime

    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", text.strip())
    if match is None:
        return 0.0
    fraction = (match[2] or ".0")[:7]
    zone = "+00:00" if match[3] in (None, "Z") else match[3]
    try:
        return max(0.0, datetime.fromisoformat(f"{match[1]}{fraction}{zone}").timestamp())
    except ValueError:
        return 0.0


class _DockerErrors:
    """Converts the SDK's errors into ``StepFailed(step, ...)`` at this one boundary."""

    def __init__(self, step: Step, what: str, engine: str | None = None) -> None:
        self.step = step
        self.what = what
        self.at = f" at {engine}" if engine else ""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, StepFailed):
            return
        import requests
        import urllib3

        if isinstance(exc, _docker().errors.APIError):
            reason = exc.explanation or str(exc)
            raise StepFailed(self.step, f"{self.what} failed: {reason}") from exc
        if isinstance(exc, requests.exceptions.ConnectionError | urllib3.exceptions.ProtocolError):
            raise StepFailed(
                self.step, f"{self.what} failed: lost the connection to the Docker Engine{self.at}: {exc}"
            ) from exc
        if isinstance(exc, _sdk_errors()):
            raise StepFailed(self.step, f"{self.what} failed: {exc}") from exc


def run_host_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    timeout: float,
    on_output: OutputSink = _discard,
    env: Mapping[str, str] | None = None,
) -> int:
    """The ``host`` test runner: run ``argv`` in ``cwd`` and return its exit code.

    It runs in its own process group, so at ``timeout`` seconds the whole group (the test runner
    and anything it started) is killed and ``StepFailed("test", ...)`` raised.
    """
    if not argv:
        raise StepFailed("test", "the test command is empty")
    try:
        process = subprocess.Popen(
            list(argv), cwd=cwd, env=None if env is None else dict(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
    except OSError as exc:
        raise StepFailed("test", f"cannot run {argv[0]!r}: {exc.strerror or exc}") from exc
    assert process.stdout is not None  # noqa: S101 - stdout=PIPE above

    def pump() -> None:
        assert process.stdout is not None  # noqa: S101
        for raw in process.stdout:
            on_output(raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    reader = threading.Thread(target=pump, name="ci-host-test-output", daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill_group(process.pid)
        process.wait()
        raise StepFailed("test", f"the test command did not finish within {timeout:g}s and was killed") from exc
    finally:
        # Whatever the tests left running in the background goes too.
        _kill_group(process.pid)
        reader.join(timeout=10)
        process.stdout.close()
    return code


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
