"""The user's compose project as the compose strategy sees it: its files, the app's service, the pin.

The compose command is an effect behind ``ComposeRunner`` (``SubprocessCompose``: ``docker compose``, the
v2 plugin, where present, else Debian's ``docker-compose`` 1.29; an argv list, never a shell, and a time
limit). Its failures leave this module as ``ComposeError`` naming the command and compose's own words.

The agent owns one file, the *pin* (``STATE_DIR/.../compose-pin.yml``, 0600), written atomically::

    services:
      web:
        image: "registry/owner/app:1.2.0@sha256:..."

and every compose command it runs is ``compose -p PROJECT -f FILE... -f PIN``: compose merges the pin over
the user's files, so only the service's image changes. The user's files are read, never written.

Parsing: ``compose config`` prints the merged configuration exactly as ``up`` will use it (several ``-f``
files merged, ``${VAR}`` and ``.env`` interpolated, ``extends`` resolved), which a YAML reader of the raw
files would have to re-implement; its output is YAML in compose 1.29 (no JSON), read with PyYAML.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cd_agent.errors import CdError
from shared.private_files import make_private_dirs

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_ONEOFF = "com.docker.compose.oneoff"
PIN_FILE = "compose-pin.yml"
# `up` may pull a service's other images and waits for the old container's stop: minutes on a Pi.
UP_TIMEOUT_S = 600.0
CONFIG_TIMEOUT_S = 60.0
_STDERR_TAIL = 2000


class ComposeError(CdError):
    """A compose command failed (exit status, time limit) or could not be run; the message says which."""


class ComposeRunner(Protocol):
    """Runs one compose command (``args`` after the compose executable) in ``cwd``; returns its stdout."""

    def run(self, args: Sequence[str], *, cwd: Path, timeout: float) -> str: ...


class SubprocessCompose:
    """The real compose: ``command`` is ``("docker", "compose")`` or ``("docker-compose",)``."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = tuple(command)

    @classmethod
    def detect(cls) -> SubprocessCompose:
        """``docker compose`` when the v2 plugin answers, else ``docker-compose``; ``ComposeError`` when neither."""
        if shutil.which("docker") is not None:
            try:
                probe = subprocess.run(
                    ["docker", "compose", "version"], capture_output=True, text=True, timeout=30, check=False
                )
            except (OSError, subprocess.TimeoutExpired):
                probe = None
            if probe is not None and probe.returncode == 0:
                return cls(("docker", "compose"))
        if shutil.which("docker-compose") is not None:
            return cls(("docker-compose",))
        raise ComposeError(
            "CD_STRATEGY=compose needs compose: neither `docker compose` (the v2 plugin) nor `docker-compose`"
            " is installed (Debian: apt-get install docker-compose)"
        )

    def run(self, args: Sequence[str], *, cwd: Path, timeout: float) -> str:
        argv = [*self.command, *args]
        shown = " ".join(argv)
        try:
            done = subprocess.run(
                argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                stdin=subprocess.DEVNULL, env={**os.environ, "COMPOSE_INTERACTIVE_NO_CLI": "1"},
            )
        except subprocess.TimeoutExpired as exc:
            raise ComposeError(f"{shown}: no answer within {timeout:g}s") from exc
        except OSError as exc:
            raise ComposeError(f"{shown}: cannot run it: {exc.strerror or exc}") from exc
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip()[-_STDERR_TAIL:]
            raise ComposeError(f"{shown} exited with {done.returncode}: {said}")
        return done.stdout


def default_project(first_file: Path) -> str:
    """Compose's own project name when none is given: ``COMPOSE_PROJECT_NAME`` of the project's ``.env`` (so the
    user's own ``docker compose`` and the agent's name one project), else the first file's folder; lower
    case, only ``a-z0-9_-``, as compose normalises it."""
    folder = first_file.resolve().parent
    name = folder.name
    dotenv = folder / ".env"
    if dotenv.is_file():
        from dotenv import dotenv_values

        name = dotenv_values(dotenv).get("COMPOSE_PROJECT_NAME") or name
    normalised = re.sub(r"[^a-z0-9_-]", "", name.lower())
    return normalised.lstrip("_-") or "default"


def split_files(text: str) -> tuple[Path, ...]:
    """``CD_COMPOSE_FILE``: comma-separated paths, in ``-f`` order; ValueError for an empty one or a missing one."""
    parts = [part.strip() for part in text.split(",")]
    if not any(parts) or not all(parts):
        raise ValueError("give one or more compose files, comma-separated, e.g. /srv/app/compose.yml")
    files = tuple(Path(part).expanduser() for part in parts)
    for path in files:
        if not path.is_file():
            raise ValueError(f"no such compose file: {path}")
    return tuple(path.resolve() for path in files)


@dataclass(frozen=True)
class ComposeProject:
    """The app's service in the user's project, and the pin file the agent owns (``pin``)."""

    files: tuple[Path, ...]
    service: str
    project: str
    pin: Path

    @property
    def cwd(self) -> Path:
        """Compose's project folder (the first file's): relative paths and ``.env`` are read from there."""
        return self.files[0].parent

    def args(self, *, pinned: bool = True) -> list[str]:
        """``-p PROJECT -f FILE... [-f PIN]``: what every command of the agent starts with."""
        args = ["-p", self.project]
        for path in self.files:
            args += ["-f", str(path)]
        if pinned and self.pin.is_file():
            args += ["-f", str(self.pin)]
        return args

    def config(self, runner: ComposeRunner, *, pinned: bool = False) -> dict[str, Any]:
        """The merged configuration (``compose config``), parsed."""
        text = runner.run([*self.args(pinned=pinned), "config"], cwd=self.cwd, timeout=CONFIG_TIMEOUT_S)
        return parse_config(text)

    def up(self, runner: ComposeRunner) -> None:
        """``up -d --no-deps SERVICE`` with the pin: the service (all its replicas) recreated when its image
        changed; no other service of the project is created, started or recreated."""
        runner.run([*self.args(), "up", "-d", "--no-deps", self.service], cwd=self.cwd, timeout=UP_TIMEOUT_S)

    def write_pin(self, image: str | None, *, version: str | None = None) -> None:
        """Pin the service to ``image`` (None: no pin, the user's files alone), atomically and 0600.
        ``version``: the ``version:`` key of the user's files, which compose 1.29 wants in every file."""
        if image is None:
            self.pin.unlink(missing_ok=True)
            return
        make_private_dirs(self.pin.parent)
        lines = ["# Written by pi-cicd's cd-agent: the release it deployed. Do not edit: pi-cicd docs/cd/database.md"]
        if version is not None:
            lines.append(f"version: {_quoted(version)}")
        lines += ["services:", f"  {_quoted(self.service)}:", f"    image: {_quoted(image)}", ""]
        temporary = self.pin.with_name(self.pin.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.pin)

    def pinned_image(self) -> str | None:
        """The image the pin file names, or None without one."""
        if not self.pin.is_file():
            return None
        try:
            return service_image(parse_config(self.pin.read_text()), self.service)
        except (OSError, ComposeError):
            return None


def parse_config(text: str) -> dict[str, Any]:
    import yaml  # only the compose strategy needs it, only at start-up and in a deploy

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ComposeError(f"compose config printed what is not YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ComposeError("compose config printed no configuration")
    return data


def service_image(config: Mapping[str, Any], service: str) -> str | None:
    """The ``image:`` of ``service`` in a parsed configuration (None when the service has none)."""
    services = config.get("services") or {}
    entry = services.get(service) if isinstance(services, dict) else None
    image = entry.get("image") if isinstance(entry, dict) else None
    return str(image) if image else None


def check_service(project: ComposeProject, repository: str, runner: ComposeRunner) -> None:
    """At start-up: the files make a valid project whose ``service`` has an ``image:`` of ``repository``.
    ValueError naming what is wrong; nothing is run but ``compose config``."""
    try:
        config = project.config(runner)
    except ComposeError as exc:
        raise ValueError(f"compose does not accept the files: {exc}") from None
    services = config.get("services") or {}
    names = ", ".join(sorted(services)) if isinstance(services, dict) else ""
    if not isinstance(services, dict) or project.service not in services:
        raise ValueError(
            f"the compose project has no service {project.service!r} (its services: {names or 'none'});"
            " set CD_COMPOSE_SERVICE (default CD_CONTAINER_NAME) to the app's service"
        )
    image = service_image(config, project.service)
    if image is None:
        raise ValueError(
            f"service {project.service!r} has no image: (a build: alone cannot be deployed from the registry);"
            f" give it image: {repository}:<version>"
        )
    if _repository(image) != _repository(repository):
        raise ValueError(
            f"service {project.service!r} runs image {image}, not CD_IMAGE {repository}: the agent would"
            " replace it with another image"
        )


def check_target(
    files: tuple[Path, ...], service: str, project: str, image: str, runner: ComposeRunner | None = None
) -> None:
    """An app's compose files with the service, project and ``CD_IMAGE`` they go with, checked before a command
    runs compose (ValueError); compose itself missing is one of the errors."""
    if runner is None:
        try:
            runner = SubprocessCompose.detect()
        except ComposeError as exc:
            raise ValueError(str(exc)) from None
    check_service(ComposeProject(files, service, project, Path("/nonexistent")), image, runner)


def _repository(image: str) -> str:
    from cd_agent.engine import normalise_repository

    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    if ":" in last:
        name = f"{head}/{last.rpartition(':')[0]}" if head else last.rpartition(":")[0]
    return normalise_repository(name)


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of YAML's)."""
    import json

    return json.dumps(text)
