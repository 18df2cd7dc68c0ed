"""The CI agent's settings: ``SharedSettings`` plus the ``CI_*`` variables of DESIGN.md.

Read once at start-up with ``shared.settings.load_settings(CiSettings, read_environment())``; a bad
or missing value raises ``SettingsError`` naming the variable, and the webhook secret is never echoed.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from ci_agent.disk_budget import DEFAULT_BUDGET
from ci_agent.payload import SEMVER_CORE, check_ref_name
from ci_agent.versioning import TagStyle
from shared.platforms import Platform, parse_platforms
from shared.registry import parse_image_ref
from shared.settings import SharedSettings, is_loopback_host, shown, size_setting

TestRunner = Literal["docker", "host"]
BuilderSetting = Literal["auto", "buildx", "classic"]  # CI_BUILDER: ci_agent/buildx.py

_GITHUB_REPO = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")


DASHBOARD_TOKEN_MIN_LENGTH = 16
POLL_MIN_INTERVAL = 5.0
_MASKED_MIN_LENGTH = 8

_BUILD_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def url_password(url: str | None) -> list[str]:
    """The password (token) in a repository URL, as written and decoded; [] for one shorter than 8 characters
    (like the parts of ``NOTIFY_URLS``: shorter ones would mask ordinary words)."""
    password = urlsplit(url).password if url and "://" in url else None
    if password and len(password) >= _MASKED_MIN_LENGTH:
        return sorted({password, unquote(password)})
    return []


def parse_build_args(text: str) -> dict[str, str]:
    """``"A=1,B=two"`` -> ``{"A": "1", "B": "two"}``; a part without ``=`` or with a bad name is refused."""
    args: dict[str, str] = {}
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep or not _BUILD_ARG_NAME.fullmatch(name.strip()):
            raise ValueError(f"{part!r} is not NAME=value (NAME: letters, digits and _)")
        args[name.strip()] = value.strip()
    return args


class CiSettings(SharedSettings):
    """Everything ``ci-agent`` reads; the environment variable of each field is its name upper-cased.

    The per-repository fields (:data:`ci_agent.targets.REPO_KEYS`) describe the one repository of an
    agent without ``CI_REPOS_FILE``; with it, each ``[repos.NAME]`` table is validated by this same
    model (``ci_agent/targets.py``), so a key means in a table what its variable means here.
    """

    # Declared first: the validators of the per-repository fields below read it.
    ci_repos_file: Path | None = Field(
        default=None,
        description="a TOML file of `[repos.NAME]` tables, one per repository; each per-repository `CI_X` is the "
        "key `x` of a table, and those variables must then not be set; SIGHUP reads it again (see \"Many "
        "repositories from one agent\")",
    )
    ci_max_parallel_runs: int = Field(
        default=1,
        description="runs that build at the same time (never two of one repository); the queue takes turns "
        "between repositories",
    )
    ci_repo_url: str | None = Field(
        default=None,
        validate_default=True,
        description="the git URL to fetch from (https with a token, or ssh)",
        json_schema_extra=shown("required"),
    )
    ci_branch: str = Field(default="main", description="the tracked branch")
    ci_github_repo: str | None = Field(
        default=None,
        description="`owner/name`; deliveries for any other repository are refused; required with "
        "`CI_GITHUB_TOKEN`",
    )
    # Set: every run reports on its commit through GitHub's statuses API (ci_agent/commit_status.py).
    ci_github_token: SecretStr | None = Field(
        default=None,
        description="set: every run reports a commit status on GitHub (a fine-grained token with *Commit "
        "statuses: write*; secret)",
    )
    ci_github_api_url: str = Field(
        default="https://api.github.com",
        description="GitHub's REST API; `https://HOST/api/v3` for GitHub Enterprise Server; `http://` only for a "
        "loopback host",
    )
    # Where people reach the dashboard (its /runs/N pages); statuses link there when it is set.
    ci_public_url: str | None = Field(
        default=None,
        description="where you reach the dashboard; commit statuses link to `CI_PUBLIC_URL/runs/N`",
    )
    # Declared before the secret: the secret's validator reads it.
    ci_allow_unsigned: bool = Field(
        default=False, description="accept unsigned deliveries when no secret is set (only behind a trusted proxy)"
    )
    ci_webhook_secret: SecretStr | None = Field(
        default=None,
        validate_default=True,
        description="the GitHub webhook secret (secret)",
        json_schema_extra=shown("required (unless `CI_ALLOW_UNSIGNED=true`)"),
    )
    ci_image: str | None = Field(
        default=None,
        validate_default=True,
        description="the image to push, e.g. `docker.io/owner/app` or `127.0.0.1:5000/owner/app`",
        json_schema_extra=shown("required"),
    )
    ci_test_command: str = Field(default="pytest -q", description="the test command")
    ci_test_runner: TestRunner = Field(
        default="docker", description="`docker` (inside the image or its `test` stage) or `host` (in the checkout)"
    )
    ci_test_timeout: float = Field(
        default=1800.0, description="seconds before the test command is killed and the run fails"
    )
    ci_build_timeout: float = Field(default=1800.0, description="seconds for the image build")
    ci_push_attempts: int = Field(default=3, description="tries for a push when the registry is unreachable")
    ci_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - GitHub has to reach the webhook; the signature guards it
        description="listen address of the webhook (public) listener",
    )
    ci_port: int = Field(default=8000, description="listen port of the webhook listener")
    # The dashboard and the run API have their own listener, loopback by default: run logs and commit
    # messages are private, and the webhook port faces the internet.
    ci_dashboard_host: str = Field(
        default="127.0.0.1", description="listen address of the dashboard and run API (private) listener"
    )
    ci_dashboard_port: int = Field(
        default=8001, description="listen port of the dashboard listener; must differ from `CI_PORT`"
    )
    # Set: the dashboard asks for it on every listener, and is served on CI_HOST:CI_PORT too.
    ci_dashboard_token: SecretStr | None = Field(
        default=None,
        description="set: the dashboard and run API need it (Bearer, or Basic password) on both listeners, and "
        "are served on the webhook port too; at least 16 characters (secret)",
    )
    ci_initial_version: str = Field(default="0.1.0", description="the first release's version")
    ci_tag_style: TagStyle = Field(
        default="auto",
        description="how release tags are spelled: `auto` (like the highest existing release, `X.Y.Z` when there "
        "is none), `plain` (`X.Y.Z`) or `v` (`vX.Y.Z`)",
    )
    ci_work_dir: Path | None = Field(
        default=None, description="where the repository is checked out", json_schema_extra=shown("`STATE_DIR/work`")
    )
    # "KEY=value,KEY2=value2": build arguments for both the test-stage and the release build,
    # e.g. BASE_IMAGE for a Dockerfile that takes its base image as an ARG.
    ci_build_args: str = Field(
        default="",
        description="build arguments for the test and release builds, `NAME=value,NAME2=value2` (e.g. "
        "`BASE_IMAGE=...`)",
        json_schema_extra=shown("none", value="comma-separated list"),
    )
    # Seconds between two `git ls-remote` of the repository (a Pi GitHub's webhooks cannot reach);
    # unset: no polling. See ci_agent/poller.py.
    ci_poll_interval: float | None = Field(
        default=None,
        description="seconds between two `git ls-remote` of `CI_REPO_URL` for the branch head and `vX.Y.Z` tags "
        "(at least 5; of several new tags in one poll only the highest is run); see \"A Pi behind NAT\"",
        json_schema_extra=shown("unset (off)"),
    )
    # Platforms (issue 22, ci_agent/multiplatform.py): "linux/arm64,linux/arm/v7" releases one OCI image index
    # per version; unset, the build engine's own platform, one image. CI_TEST_PLATFORMS: where the tests run
    # (unset: the engine's own platform only); foreign ones run under QEMU user emulation.
    ci_platforms: str = Field(
        default="",
        description="e.g. `linux/arm64,linux/arm/v7,linux/amd64`: each release is one OCI image index with an "
        "image per platform; see \"Releasing for the Pi from another machine\"",
        json_schema_extra=shown("unset (the build engine's own platform, one image)", value="comma-separated list"),
    )
    ci_test_platforms: str = Field(
        default="",
        description="the platforms the tests run on, each in a container of that platform (foreign ones under "
        "QEMU), each with `CI_TEST_TIMEOUT`; must be among `CI_PLATFORMS` when that is set; needs "
        "`CI_TEST_RUNNER=docker`",
        json_schema_extra=shown("unset (the build engine's own platform)", value="comma-separated list"),
    )
    # The Docker engine the test and build steps run on (unix://, tcp://, ssh://user@host); unset: the local one.
    ci_build_docker_host: str | None = Field(
        default=None,
        description="the Docker engine the test, build and push steps run on: `unix:///...`, `tcp://host:2376` "
        "(TLS from `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`, as for the docker CLI), `ssh://user@host` (needs "
        "`pip install 'pi-cicd[ssh]'`; the agents' image has it); see \"Building on another machine\"",
        json_schema_extra=shown("unset (the local engine)"),
    )
    ci_build_fallback_local: bool = Field(
        default=False,
        description="`true`: a run that cannot reach `CI_BUILD_DOCKER_HOST` builds on the local engine instead "
        "of failing",
    )
    # CI_BUILDER (ci_agent/buildx.py): agent-wide, as the docker CLI and its plugins are the machine's.
    ci_builder: BuilderSetting = Field(
        default="auto",
        description="what builds each platform's image when `CI_PLATFORMS` or `CI_TEST_PLATFORMS` is set: `auto` "
        "(`docker buildx` where the local docker CLI has it and the build engine is the local one, else the classic "
        "builder), `buildx` (insist: a run without it fails at its build), `classic` (the engine's classic builder "
        "through the Docker SDK); builds without platforms always use the classic builder",
    )
    # CI_DISK_BUDGET (ci_agent/disk_budget.py): agent-wide, as the engine and its build cache are shared by
    # every repository (not a repos-file key).
    ci_disk_budget: int = Field(
        default=DEFAULT_BUDGET,
        description="after every run, what CI built on the engine (test images, untagged old releases, their layer "
        "cache, stopped test containers) is pruned oldest first down to this size (`0` keeps only the last "
        "releases); the last release of each repository (`NAME:latest`) is always kept, images CI did not make are "
        "never touched; agent-wide (see \"Run on a Pi: SD cards\")",
        json_schema_extra=shown("`4GB`", value="size: bytes, or `4GB`, `500MB`, `1.5GiB`"),
    )

    log_dir: Path = Path("logs/ci")
    state_dir: Path = Path("state/ci")

    def secret_values(self) -> list[str]:
        """The shared secrets plus the password (token) in ``CI_REPO_URL``, as written and decoded.

        Like the parts of ``NOTIFY_URLS``, only from 8 characters on: shorter ones would mask ordinary words.
        """
        return [*super().secret_values(), *url_password(self.ci_repo_url)]

    @property
    def work_dir(self) -> Path:
        """Where checkouts live: ``CI_WORK_DIR``, else ``STATE_DIR/work``."""
        return self.ci_work_dir if self.ci_work_dir is not None else self.state_dir / "work"

    @property
    def build_args(self) -> dict[str, str]:
        """``CI_BUILD_ARGS`` as a dict; validated at start-up, so this cannot fail."""
        return parse_build_args(self.ci_build_args)

    @property
    def platforms(self) -> tuple[Platform, ...]:
        """``CI_PLATFORMS`` parsed; validated at start-up, so this cannot fail."""
        return parse_platforms(self.ci_platforms)

    @property
    def test_platforms(self) -> tuple[Platform, ...]:
        """``CI_TEST_PLATFORMS`` parsed; validated at start-up, so this cannot fail."""
        return parse_platforms(self.ci_test_platforms)

    @field_validator("ci_disk_budget", mode="before")
    @classmethod
    def _disk_budget(cls, value: object) -> object:
        return size_setting(value)

    @field_validator("ci_platforms")
    @classmethod
    def _platforms(cls, value: str) -> str:
        parse_platforms(value)  # its ValueError names the bad platform
        return value

    @field_validator("ci_test_platforms")
    @classmethod
    def _test_platforms(cls, value: str, info: ValidationInfo) -> str:
        wanted = parse_platforms(value)
        released = parse_platforms(info.data.get("ci_platforms") or "")
        stray = [str(item) for item in wanted if released and item not in released]
        if stray:
            raise ValueError(
                f"names {', '.join(stray)}, which CI_PLATFORMS (a repos file's platforms) does not release"
            )
        if wanted and info.data.get("ci_test_runner") == "host":
            raise ValueError(
                "needs CI_TEST_RUNNER=docker (a repos file's test_runner): "
                "tests run for a platform inside a container of it"
            )
        return value

    @field_validator("ci_build_docker_host")
    @classmethod
    def _docker_host(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not re.fullmatch(r"(unix|tcp|ssh|npipe)://\S+", value):
            raise ValueError("must be a Docker address: unix:///path, tcp://host:2376 or ssh://user@host")
        if value.startswith("ssh://") and importlib.util.find_spec("paramiko") is None:
            raise ValueError("ssh:// needs the paramiko package: pip install 'pi-cicd[ssh]'")
        return value

    @field_validator("ci_builder")
    @classmethod
    def _builder(cls, value: str, info: ValidationInfo) -> str:
        host = info.data.get("ci_build_docker_host")
        if value == "buildx" and host:
            raise ValueError(
                f"buildx builds on the local engine only (the docker CLI's), but CI_BUILD_DOCKER_HOST={host}: "
                "use CI_BUILDER=auto or classic there (the remote engine builds with its classic builder)"
            )
        return value

    @field_validator("ci_build_args")
    @classmethod
    def _build_args(cls, value: str) -> str:
        parse_build_args(value)  # its ValueError names the bad part
        return value

    @field_validator("ci_webhook_secret")
    @classmethod
    def _secret_required(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None and info.data.get("ci_allow_unsigned") is False and info.data.get("ci_repos_file") is None:
            raise ValueError(
                "CI_WEBHOOK_SECRET is required (the webhook verifies every delivery with it); "
                "set CI_ALLOW_UNSIGNED=true to accept unsigned deliveries instead"
            )
        return value

    @field_validator("ci_repo_url", "ci_image")
    @classmethod
    def _required_without_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        # With CI_REPOS_FILE each table names its own; the table's validation comes back here without one.
        if value is None and info.data.get("ci_repos_file") is None and "ci_repos_file" in info.data:
            raise PydanticCustomError("missing", "Field required")  # reads "... is required but not set"
        return value

    @field_validator("ci_repo_url", "ci_test_command", "ci_host", "ci_dashboard_host")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("ci_branch")
    @classmethod
    def _branch_name(cls, value: str) -> str:
        problem = check_ref_name(value)
        if problem is not None:
            raise ValueError(f"not a usable branch name: it {problem}")
        return value

    @field_validator("ci_github_repo")
    @classmethod
    def _owner_slash_name(cls, value: str | None) -> str | None:
        if value is not None and not _GITHUB_REPO.fullmatch(value):
            raise ValueError("must be the GitHub repository as owner/name, e.g. octocat/hello-world")
        return value

    @field_validator("ci_github_token")
    @classmethod
    def _token_needs_repo(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # Absent from info.data when CI_GITHUB_REPO itself was refused: its own error says why.
        if value is not None and "ci_github_repo" in info.data and info.data["ci_github_repo"] is None:
            raise ValueError("needs CI_GITHUB_REPO (owner/name): the repository whose commits get the statuses")
        if value is not None and (not value.get_secret_value().isprintable() or " " in value.get_secret_value()):
            raise ValueError("must be one word of printable text (it goes into an Authorization header)")
        return value

    @field_validator("ci_github_api_url", "ci_public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not re.fullmatch(r"https?://[^\s/@?#]+(/[^\s?#]*)?", value):
            raise ValueError("must be an http:// or https:// URL without credentials, e.g. https://api.github.com")
        return value

    @field_validator("ci_github_api_url")
    @classmethod
    def _token_not_in_clear(cls, value: str) -> str:
        # The token goes in every request's Authorization header: over http:// anyone on the path reads it.
        # Loopback is fine (tests, a local proxy that adds TLS): that traffic never leaves the machine.
        url = urlsplit(value)
        if url.scheme == "http" and not is_loopback_host(url.hostname or ""):
            raise ValueError(
                f"http:// would send CI_GITHUB_TOKEN unencrypted to {url.netloc}: use https:// "
                "(http:// is accepted for a loopback host only: localhost, 127.0.0.1, [::1])"
            )
        return value

    @field_validator("ci_image")
    @classmethod
    def _image_reference(cls, value: str | None) -> str | None:
        if value is None:
            return None
        ref = parse_image_ref(value)  # its ValueError names what is wrong with the reference
        if ref.tag is not None or ref.digest is not None:
            raise ValueError("must be an image name without a tag or digest, e.g. docker.io/owner/app")
        return value.strip()

    @field_validator("ci_initial_version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not SEMVER_CORE.fullmatch(value):
            raise ValueError("must be a version X.Y.Z, e.g. 0.1.0")
        return value

    @field_validator("ci_port", "ci_dashboard_port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 0 < value < 65536:
            raise ValueError("must be a TCP port between 1 and 65535")
        return value

    @field_validator("ci_dashboard_port")
    @classmethod
    def _own_port(cls, value: int, info: ValidationInfo) -> int:
        # Two listeners on one port would be one listener: the dashboard would face the internet.
        if value == info.data.get("ci_port"):
            raise ValueError("must differ from CI_PORT (the dashboard has a listener of its own)")
        return value

    @field_validator("ci_dashboard_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < DASHBOARD_TOKEN_MIN_LENGTH:
            raise ValueError(
                f"must be at least {DASHBOARD_TOKEN_MIN_LENGTH} characters, e.g. the output of `openssl rand -hex 32`"
            )
        if value is not None and not value.get_secret_value().isprintable():
            raise ValueError("must be printable text (it is typed into a browser's password prompt)")
        if value is not None and value.get_secret_value() != value.get_secret_value().strip():
            raise ValueError("must not start or end with a space (an Authorization header cannot carry it)")
        return value

    @field_validator("ci_test_timeout", "ci_build_timeout")
    @classmethod
    def _positive_seconds(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a number of seconds above 0")
        return value

    @field_validator("ci_poll_interval")
    @classmethod
    def _poll_interval(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value >= POLL_MIN_INTERVAL):
            raise ValueError(
                f"must be a number of seconds of at least {POLL_MIN_INTERVAL:g} (each poll is a request to the remote)"
            )
        return value

    @field_validator("ci_push_attempts", "ci_max_parallel_runs")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value
