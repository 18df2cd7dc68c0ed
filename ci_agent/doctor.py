"""``ci-agent doctor``: is this machine ready to run the CI agent? One finding per check (``shared/doctor.py``).

Checked, in order: the settings as ``ci-agent serve`` reads them (environment over ``.env``, and every
table of ``CI_REPOS_FILE``); each Docker engine a repository builds on (``DOCKER_HOST`` or its
``CI_BUILD_DOCKER_HOST``) and its version, and the free space where it keeps its data (``DISK_MIN_FREE``);
what builds the platforms' images (``CI_BUILDER``: is ``docker buildx`` there) when a repository names some;
then for each repository: that its registry login may push to the image's repository (an upload session
is started and cancelled: no tag, manifest or blob is ever pushed), that its GitHub token may report
commit statuses (when one is set), and how the webhook is guarded; then this machine's clock against
each registry's, and the mail server's login when ``SMTP_HOST`` is set. Nothing here runs a pipeline,
writes state, sends mail or contacts GitHub beyond one read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ci_agent.errors import CiError, CommitStatusFailed, StepFailed
from ci_agent.settings import CiSettings
from ci_agent.targets import RepoTarget, RepoTargets, load_targets
from shared.disk import engine_free_space
from shared.doctor import (
    Finding,
    Report,
    checked,
    clock_finding,
    dedupe,
    disk_finding,
    docker_finding,
    email_finding,
    environment_secrets,
    fail,
    ok,
    open_client,
    registry_fix,
    settings_finding,
    warn,
)
from shared.errors import PiCicdError
from shared.settings import load_settings

if TYPE_CHECKING:
    from ci_agent.builder import DockerGateway

STATUS_SCOPES = frozenset({"repo", "repo:status"})  # classic scopes that may write commit statuses
STATUS_RIGHTS_HINT = (
    "create a token that may write commit statuses: classic with the repo:status scope, or fine-grained with "
    "Commit statuses: Read and write on {repo}; set it as {setting}"
)


@dataclass(frozen=True)
class _Loaded:
    settings: CiSettings
    targets: RepoTargets


def diagnose(environ: Mapping[str, str]) -> Report:
    """Every check against ``environ`` (what ``read_environment`` gave), in order; never raises."""
    report = Report(secrets=environment_secrets(environ))
    loaded: list[_Loaded] = []

    def load() -> str:
        settings = load_settings(CiSettings, environ)
        targets = load_targets(settings, environ)
        loaded.append(_Loaded(settings, targets))
        repos = "; ".join(f"{t.name} ({t.github_repo or t.repo_url} -> {t.image.name})" for t in targets)
        source = f"CI_REPOS_FILE={settings.ci_repos_file}" if targets.from_file else "the environment"
        return f"valid ({source}): {len(targets)} repositor{'y' if len(targets) == 1 else 'ies'}: {repos}"

    if report.add(settings_finding(load)).level == "FAIL":
        finding, gateway = _engine(None, None)  # what needs no settings is still worth knowing
        gateway.close()
        report.add(finding)
        return report
    settings, targets = loaded[0].settings, loaded[0].targets
    report.secrets += [*settings.secret_values(), *targets.secret_values()]

    engines = list(dedupe(t.build_host or "" for t in targets))  # "": the local engine (DOCKER_HOST)
    for host in engines:
        finding, gateway = _engine(host or None, _setting_of(targets, host))
        if finding.level == "FAIL" and host and any(t.fallback_local for t in targets if t.build_host == host):
            # Its runs build on the local engine instead: not ready as meant, but they run; that engine gets a line.
            finding = warn(finding.check, finding.detail,
                           f"{finding.fix}; until then its runs build on the local engine (build_fallback_local)")
            if "" not in engines:
                engines.append("")
        report.add(finding)
        if finding.level == "ok":
            label = f"disk [{host}]" if host else "disk"
            report.add(disk_finding(settings.disk_min_free, engine_free_space(gateway.data_root, host or None), label))
        gateway.close()
    builder = builder_finding(targets)
    if builder is not None:
        report.add(builder)
    registries: dict[str, RepoTarget] = {}
    for target in targets:
        report.add(push_finding(target))
        report.add(github_finding(settings, target))
        report.add(webhook_finding(settings, target))
        registries.setdefault(target.image.registry, target)
    for registry, target in registries.items():
        with open_client(target.image, None, None) as client:
            report.add(clock_finding(registry, client.server_date))
    report.add(email_finding(settings))
    return report


def _label(check: str, target: RepoTarget) -> str:
    return f"{check} [{target.name}]" if target.from_file else check


def _setting_of(targets: RepoTargets, host: str) -> str:
    if not host:
        return "DOCKER_HOST"
    return "build_docker_host of the repository's table" if targets.from_file else "CI_BUILD_DOCKER_HOST"


def _engine(host: str | None, setting: str | None) -> tuple[Finding, DockerGateway]:
    """The engine a repository builds on answers (and its version); the gateway, for the disk check."""
    from ci_agent.builder import DockerGateway

    gateway = DockerGateway(build_host=host, fallback_local=False)
    check = f"docker [{host}]" if host else "docker"

    def version() -> str:
        try:
            return gateway.engine()
        except StepFailed as exc:  # a run's step says "build failed: ..."; doctor says what it found
            raise CiError(exc.message) from exc

    finding = docker_finding(check, version, setting or "DOCKER_HOST")
    return finding, gateway


def builder_finding(targets: Iterable[RepoTarget], probe: Callable[[], str | None] | None = None) -> Finding | None:
    """What builds the platforms' images (``CI_BUILDER``) where a repository names platforms and builds on the
    local engine: ``docker buildx`` when its CLI plugin answers; None when no repository has platforms there."""
    from ci_agent.buildx import buildx_version

    local = [t for t in targets if (t.platforms or t.test_platforms) and t.build_host is None]
    if not local or all(t.builder == "classic" for t in local):
        return None
    version = (probe or buildx_version)()
    if version is not None:
        return ok("builder", f"docker buildx {version}: the platforms' images are built with it (CI_BUILDER)")
    if any(t.builder == "buildx" for t in local):
        return fail("builder", "CI_BUILDER=buildx, but `docker buildx version` does not answer",
                    "install the docker buildx plugin (Debian 13's docker-buildx package; scripts/buildx), or set "
                    "CI_BUILDER=auto")
    return ok("builder", "the classic builder (no `docker buildx` on this machine; CI_BUILDER=auto)")


def push_finding(target: RepoTarget) -> Finding:
    """The registry login may push to the image's repository: an upload is started and cancelled."""
    check = _label("registry", target)
    login = "registry_username / registry_password" if target.from_file else "REGISTRY_USERNAME / REGISTRY_PASSWORD"

    def run() -> Finding:
        with open_client(target.image, target.registry_username, target.registry_password) as client:
            cancelled = client.check_push()
        who = f"user {target.registry_username!r}" if target.registry_username else "anonymous access"
        if not cancelled:
            return warn(check, f"{who} may push to {target.image.name}, but the test upload was not cancelled",
                        "nothing to do: the registry drops unfinished uploads on its own")
        return ok(check, f"{who} may push to {target.image.name} (an upload was started and cancelled; "
                  "nothing pushed)")

    return checked(check, run, registry_fix(target.image, login=login, push=True))


def github_finding(settings: CiSettings, target: RepoTarget) -> Finding:
    """The token may report commit statuses on the repository (when statuses are on)."""
    from ci_agent.commit_status import GitHubStatusApi

    check = _label("github", target)
    setting = "github_token" if target.from_file else "CI_GITHUB_TOKEN"
    if target.github_token is None:
        return ok(check, f"commit statuses are off ({setting} is not set)")
    if target.github_repo is None:
        return warn(check, f"{setting} is set but {'github_repo' if target.from_file else 'CI_GITHUB_REPO'} is "
                    "not: no commit statuses are sent", "set it to owner/name of the repository")
    repo, token = target.github_repo, target.github_token
    fix = STATUS_RIGHTS_HINT.format(repo=repo, setting=setting)

    def run() -> Finding:
        api = GitHubStatusApi(settings.ci_github_api_url, repo, token, deadline=15.0)
        try:
            scopes = api.token_scopes(target.branch)
        finally:
            api.close()
        if scopes is None:
            return ok(check, f"the token reads the statuses of {repo} (a fine-grained token: it needs Commit "
                      "statuses: Read and write, which GitHub shows on the token's page)")
        names = sorted({scope.strip() for scope in scopes.split(",") if scope.strip()})
        shown = ", ".join(names) or "none"
        if STATUS_SCOPES & set(names):
            return ok(check, f"classic token with scopes {shown}: may write the commit statuses of {repo}")
        if "public_repo" in names:
            return warn(check, f"classic token with scopes {shown}: writes statuses only if {repo} is public",
                        "add the repo:status scope if the repository is private")
        return fail(check, f"classic token with scopes {shown}: none lets it write commit statuses", fix)

    def fix_for(exc: PiCicdError) -> str:
        if isinstance(exc, CommitStatusFailed) and not exc.permanent:
            return f"check that CI_GITHUB_API_URL ({settings.ci_github_api_url}) is reachable from here and try again"
        return fix

    return checked(check, run, fix_for)


def webhook_finding(settings: CiSettings, target: RepoTarget) -> Finding:
    """Deliveries are verified with a secret, or the repository is polled instead."""
    check = _label("webhook", target)
    setting = "webhook_secret" if target.from_file else "CI_WEBHOOK_SECRET"
    if target.webhook_secret is not None:
        return ok(check, f"{setting} is set: every delivery's signature is checked")
    if target.poll_interval is not None:
        return ok(check, f"no {setting}: the repository is polled every {target.poll_interval:g}s instead")
    if settings.ci_allow_unsigned:
        return warn(check, f"no {setting} and CI_ALLOW_UNSIGNED=true: anyone who reaches the webhook can start runs",
                    f"set {setting} to the secret of the GitHub webhook (or poll with CI_POLL_INTERVAL)")
    return fail(check, f"no {setting}: deliveries cannot be verified",
                f"set {setting} to the secret of the GitHub webhook, or poll with CI_POLL_INTERVAL")
