"""The repositories one ``ci-agent`` serves: ``RepoTarget`` records, parsed once from settings.

Without ``CI_REPOS_FILE`` the environment's ``CI_*`` variables define one repository, with the paths
of before (``LOG_DIR/…_run-NNNN.log``, ``STATE_DIR/release-revisions.json``, ``STATE_DIR/work``).
With it, each ``[repos.NAME]`` table of the TOML file is one repository::

    [repos.web]
    repo_url = "https://github.com/me/web.git"
    github_repo = "me/web"
    image = "docker.io/me/web"
    webhook_secret = "…"            # the file must then be chmod 600

Every per-repository ``CI_X`` variable is the key ``x`` (:data:`REPO_KEYS`), validated by the very
``CiSettings`` model the environment goes through, so meaning, default and error text are the same;
``registry_username`` / ``registry_password`` default to the environment's ``REGISTRY_*``. ``platforms``,
``test_platforms``, ``build_docker_host`` and ``build_fallback_local`` are per repository too: the agent
gives each repository's pipeline a ``DockerGateway`` of its own build engine (``ci_agent/agent.py``). Each
repository of a file has its own paths: ``LOG_DIR/NAME/``, ``STATE_DIR/repos/NAME/`` (release guard
and poll state) and ``WORK_DIR/NAME/`` (its checkout).

Nothing here is read again during a run: a run holds the ``RepoTarget`` it was started with, and a
reload (SIGHUP) builds new records for the runs after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ci_agent.settings import BuilderSetting, CiSettings, TestRunner, url_password
from ci_agent.versioning import TagStyle
from shared.errors import SettingsError
from shared.platforms import Platform
from shared.registry import ImageRef, parse_image_ref
from shared.settings import validate_settings
from shared.targets_file import NAME_PATTERN, TargetTable, field_namer, read_targets_file, table_values

SECTION = "repos"
SETTING = "CI_REPOS_FILE"
# Every per-repository CI_X variable, as the key x of a [repos.NAME] table.
REPO_KEYS = (
    "repo_url", "branch", "github_repo", "github_token", "webhook_secret", "image", "test_command", "test_runner",
    "test_timeout", "build_timeout", "build_args", "initial_version", "tag_style", "poll_interval",
    "push_attempts", "registry_username", "registry_password",
    # Issue 22's settings: one repository releases for the Pi while another does not, or builds elsewhere.
    "platforms", "test_platforms", "build_docker_host", "build_fallback_local",
)
# Agent-wide fields a table may override under their own name (the environment's REGISTRY_*).
UNPREFIXED = frozenset({"registry_username", "registry_password"})
SECRET_KEYS = ("github_token", "webhook_secret", "registry_password")
PREFIX = "ci_"


def field_of(key: str) -> str:
    """The ``CiSettings`` field of table key ``key``: ``image`` is ``ci_image``."""
    return key if key in UNPREFIXED else f"{PREFIX}{key}"


# Each per-repository CiSettings field and its table key: the reference pages and --help show them side by side.
FIELD_KEYS = {field_of(key): key for key in REPO_KEYS}


@dataclass(frozen=True)
class RepoPaths:
    """Where one repository's files live: its run logs, its state (release guard, poll) and its checkout."""

    log_dir: Path
    state_dir: Path
    work_dir: Path

    @property
    def checkout_dir(self) -> Path:
        return self.work_dir / "checkout"

    @property
    def revisions_file(self) -> Path:
        return self.state_dir / "release-revisions.json"

    @property
    def poll_refs_file(self) -> Path:
        return self.state_dir / "poll-refs.json"


@dataclass(frozen=True)
class RepoTarget:
    """One repository: what its runs need, as values (nothing is parsed again)."""

    name: str
    repo_url: str
    branch: str
    github_repo: str | None
    github_token: SecretStr | None
    webhook_secret: SecretStr | None
    image: ImageRef
    test_command: str
    test_runner: TestRunner
    test_timeout: float
    build_timeout: float
    build_args: Mapping[str, str]
    initial_version: str
    tag_style: TagStyle
    poll_interval: float | None
    push_attempts: int
    registry_username: str | None
    registry_password: SecretStr | None
    paths: RepoPaths
    # A [repos.NAME] table (emails name it first) rather than the environment's one repository.
    from_file: bool = False
    # CI_PLATFORMS, CI_TEST_PLATFORMS, CI_BUILD_DOCKER_HOST, CI_BUILD_FALLBACK_LOCAL: in a repos file, the
    # table's keys platforms, test_platforms, build_docker_host, build_fallback_local.
    platforms: tuple[Platform, ...] = ()
    test_platforms: tuple[Platform, ...] = ()
    build_host: str | None = None
    fallback_local: bool = False
    # CI_BUILDER (agent-wide): what builds the platforms' images (ci_agent/buildx.py).
    builder: BuilderSetting = "auto"

    def names_repository(self, full_name: str) -> bool:
        """Whether a delivery naming ``full_name`` (GitHub's ``owner/name``) is for this repository."""
        return self.github_repo is not None and self.github_repo.lower() == full_name.lower()

    def secret_values(self) -> list[str]:
        """This repository's secrets in clear (the token in ``repo_url`` too), for redaction. Never log them."""
        return [
            *(
                secret.get_secret_value()
                for secret in (self.github_token, self.webhook_secret, self.registry_password)
                if secret is not None and secret.get_secret_value()
            ),
            *url_password(self.repo_url),
        ]


@dataclass(frozen=True)
class RepoTargets:
    """The repositories of one configuration, in file order; ``from_file`` unless the environment made one."""

    targets: tuple[RepoTarget, ...]
    from_file: bool = False
    _by_name: dict[str, RepoTarget] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {target.name: target for target in self.targets})

    def __iter__(self) -> Iterator[RepoTarget]:
        return iter(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def names(self) -> list[str]:
        return [target.name for target in self.targets]

    @property
    def first(self) -> RepoTarget:
        return self.targets[0]

    def get(self, name: str | None) -> RepoTarget | None:
        return None if name is None else self._by_name.get(name)

    def secret_values(self) -> list[str]:
        return [value for target in self.targets for value in target.secret_values()]


def env_repo_name(settings: CiSettings) -> str:
    """The name of the environment's one repository: ``CI_GITHUB_REPO``'s name, else the image's last part.

    It is what the runs of an agent without a repos file record as their ``repo`` (and what the
    rows of a run store from before repositories had names get), so it must not depend on anything
    but settings the user already has.
    """
    source = settings.ci_github_repo or settings.ci_image or ""
    last = source.rstrip("/").rsplit("/", 1)[-1].lower()
    name = re.sub(r"[^a-z0-9_.-]+", "-", last).lstrip("_.-")[:63]
    return name if NAME_PATTERN.match(name) else "repo"


def env_target(settings: CiSettings) -> RepoTarget:
    """The one repository of settings without ``CI_REPOS_FILE`` (a one-off pipeline, tests)."""
    if settings.ci_repos_file is not None:
        raise SettingsError(f"{SETTING} is set: the repositories are its tables (load_targets)")
    return load_targets(settings, {}).first


def load_targets(settings: CiSettings, environ: Mapping[str, str]) -> RepoTargets:
    """The repositories ``settings`` describe: the file's tables, or the environment's one; else ``SettingsError``.

    ``environ`` is what ``settings`` were read from: a table starts from its agent-wide values.
    """
    if settings.ci_repos_file is None:
        name = env_repo_name(settings)
        paths = RepoPaths(settings.log_dir, settings.state_dir, settings.work_dir)
        return RepoTargets((target_from_settings(settings, name, paths),))
    _refuse_environment_repo(environ)
    tables = read_targets_file(
        settings.ci_repos_file, setting=SETTING, section=SECTION, keys=REPO_KEYS, secret_keys=SECRET_KEYS
    )
    base = _agent_wide_values(environ)
    try:
        targets = tuple(_table_target(settings, base, table) for table in tables)
        _check_together(targets)
    except SettingsError as exc:
        raise SettingsError(f"{SETTING}={str(settings.ci_repos_file)!r}: {exc}") from None
    return RepoTargets(targets, from_file=True)


def target_from_settings(settings: CiSettings, name: str, paths: RepoPaths, *, from_file: bool = False) -> RepoTarget:
    """The record of a validated settings object (the environment's, or one table's)."""
    if settings.ci_repo_url is None or settings.ci_image is None:
        raise SettingsError(f"repository {name!r} has no repo_url or image")  # the validators make this unreachable
    return RepoTarget(
        name=name,
        repo_url=settings.ci_repo_url,
        branch=settings.ci_branch,
        github_repo=settings.ci_github_repo,
        github_token=settings.ci_github_token,
        webhook_secret=settings.ci_webhook_secret,
        image=parse_image_ref(settings.ci_image),
        test_command=settings.ci_test_command,
        test_runner=settings.ci_test_runner,
        test_timeout=settings.ci_test_timeout,
        build_timeout=settings.ci_build_timeout,
        build_args=settings.build_args,
        initial_version=settings.ci_initial_version,
        tag_style=settings.ci_tag_style,
        poll_interval=settings.ci_poll_interval,
        push_attempts=settings.ci_push_attempts,
        registry_username=settings.registry_username,
        registry_password=settings.registry_password,
        paths=paths,
        from_file=from_file,
        platforms=settings.platforms,
        test_platforms=settings.test_platforms,
        build_host=settings.ci_build_docker_host,
        fallback_local=settings.ci_build_fallback_local,
        builder=settings.ci_builder,
    )


def _refuse_environment_repo(environ: Mapping[str, str]) -> None:
    # Two places for one value would leave the user guessing which one counts.
    set_here = [
        field_of(key).upper() for key in REPO_KEYS
        if key not in UNPREFIXED and environ.get(field_of(key).upper(), "").strip()
    ]
    if set_here:
        raise SettingsError(
            f"{', '.join(set_here)} set in the environment, but with {SETTING} every repository's settings are "
            f"keys of its [{SECTION}.NAME] table (e.g. CI_IMAGE is the key image): move or unset them"
        )


def _agent_wide_values(environ: Mapping[str, str]) -> dict[str, Any]:
    per_repo = {field_of(key) for key in REPO_KEYS} - UNPREFIXED
    return {
        name: environ[name.upper()]
        for name in CiSettings.model_fields
        if name not in per_repo and name != "ci_repos_file" and name.upper() in environ
    }


def _table_target(settings: CiSettings, base: Mapping[str, Any], table: TargetTable) -> RepoTarget:
    values = {**base, **table_values(PREFIX, table, UNPREFIXED)}
    name_of = field_namer(SECTION, table.name, PREFIX, REPO_KEYS)
    validated = validate_settings(CiSettings, values, name_of=name_of)
    paths = RepoPaths(
        log_dir=settings.log_dir / table.name,
        state_dir=settings.state_dir / SECTION / table.name,
        work_dir=settings.work_dir / table.name,
    )
    return target_from_settings(validated, table.name, paths, from_file=True)


def _check_together(targets: tuple[RepoTarget, ...]) -> None:
    where = ""
    if len(targets) > 1:
        unnamed = [f"[{SECTION}.{t.name}]" for t in targets if t.github_repo is None]
        if unnamed:
            raise SettingsError(
                where + f"{', '.join(unnamed)} needs github_repo (owner/name): with several repositories the "
                "webhook picks the repository by the delivery's repository.full_name"
            )
    seen_repo: dict[str, str] = {}
    seen_image: dict[str, str] = {}
    for target in targets:
        if target.github_repo is not None:
            other = seen_repo.setdefault(target.github_repo.lower(), target.name)
            if other != target.name:
                raise SettingsError(
                    where + f"[{SECTION}.{other}] and [{SECTION}.{target.name}] both have github_repo "
                    f"{target.github_repo!r}: a delivery must name one repository"
                )
        other = seen_image.setdefault(target.image.name, target.name)
        if other != target.name:
            raise SettingsError(
                where + f"[{SECTION}.{other}] and [{SECTION}.{target.name}] both push image {target.image.name!r}: "
                "their versions would collide"
            )
