"""``ci-agent doctor`` and ``cd-agent doctor`` as real processes against the real components: dockerd, the
test registry (plain and with htpasswd), a local server answering as GitHub's statuses API does.

Each check is made to pass and to fail for a real reason (a wrong password, a repository that does not
exist, an engine nobody listens for, an image that is not there), the exit code says ready (0), not ready
(1) or bad settings (2), and no configured secret appears in anything the command prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.registry import RegistryClient, parse_image_ref
from tests.support.cd_apps import cd_agent, clean_environ
from tests.support.docker_env import DockerJanitor, unique
from tests.support.github_api import GitHubApi
from tests.support.ports import free_port
from tests.support.registry_auth import AuthRegistry, push_image
from tests.support.registry_server import RegistryServer

pytestmark = [pytest.mark.docker]

GITHUB_REPO = "octo/doctor-app"
TOKEN = "ghp_doctor-token-Zq81-never-printed"
WEBHOOK_SECRET = "doctor-webhook-secret-7Hk2"
WRONG_PASSWORD = "doctor-wrong-password-3xV9"


def ci_agent(*args: str, environ: dict[str, str], cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``ci-agent ARGS`` as a real process with exactly the settings in ``environ``."""
    return subprocess.run(
        [sys.executable, "-m", "ci_agent", *args],
        env=clean_environ(environ), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``{check: "LEVEL detail -> fix"}`` from doctor's text output."""
    found = {}
    for line in result.stdout.splitlines():
        level, _, rest = line.partition(" ")
        check, sep, detail = rest.strip().partition(": ")
        if sep and level in ("ok", "warn", "FAIL"):
            found[check] = f"{level} {detail}"
    return found


def assert_no_secret(result: subprocess.CompletedProcess[str], *secrets: str) -> None:
    for value in secrets:
        assert value not in result.stdout, f"a secret in stdout:\n{result.stdout}"
        assert value not in result.stderr, f"a secret in stderr:\n{result.stderr}"


@pytest.fixture
def github(secret: Callable[[str], str]) -> Iterator[GitHubApi]:
    server = GitHubApi(GITHUB_REPO, secret(TOKEN), scopes="repo, read:org").start()
    yield server
    server.stop()


def ci_environ(tmp_path: Path, image: str, **overrides: str) -> dict[str, str]:
    return {
        "CI_REPO_URL": "https://github.com/octo/doctor-app.git",  # never contacted by doctor
        "CI_GITHUB_REPO": GITHUB_REPO,
        "CI_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "CI_IMAGE": image,
        "LOG_DIR": str(tmp_path / "logs"),
        "STATE_DIR": str(tmp_path / "state"),
        **overrides,
    }


def tags_of(image: str, registry: AuthRegistry | None = None) -> list[str]:
    from pydantic import SecretStr

    auth: dict[str, Any] = {"username": registry.username, "password": SecretStr(registry.password)} if registry else {}
    with RegistryClient(parse_image_ref(image), **auth) as client:
        return client.list_tags()


# -- ci-agent doctor -------------------------------------------------------------------------------------


def test_ci_doctor_ready_pushes_nothing(
    tmp_path: Path, registry: RegistryServer, github: GitHubApi, secret: Callable[[str], str]
) -> None:
    image = f"{registry.host}/{unique('doctor')}/app"
    environ = ci_environ(tmp_path, image, CI_GITHUB_TOKEN=TOKEN, CI_GITHUB_API_URL=github.url,
                         SMTP_PASSWORD=secret("doctor-smtp-password-Pq4"))
    result = ci_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    found = lines(result)
    assert found["settings"].startswith("ok valid (the environment): 1 repository"), found
    assert found["docker"].startswith("ok the local Docker engine (Docker "), found
    assert found["disk"].startswith("ok "), found
    assert found["registry"].startswith(f"ok anonymous access may push to {image} "), found
    assert found["github"] == (
        f"ok classic token with scopes read:org, repo: may write the commit statuses of {GITHUB_REPO}")
    assert found["webhook"].startswith("ok CI_WEBHOOK_SECRET is set"), found
    assert found[f"clock [{registry.host}]"].startswith("ok in sync with registry"), found
    assert result.stdout.rstrip().endswith("warning(s))")
    # The push check started an upload and cancelled it: the repository has no tag, and GitHub got no status.
    assert tags_of(image) == []
    assert github.created() == []
    assert [r.method for r in github.requests] == ["GET"]
    assert_no_secret(result, TOKEN, WEBHOOK_SECRET, "doctor-smtp-password-Pq4")


def test_ci_doctor_names_what_is_wrong_without_printing_a_secret(
    tmp_path: Path, htpasswd_registry: AuthRegistry, github: GitHubApi, secret: Callable[[str], str]
) -> None:
    image = f"{htpasswd_registry.host}/{unique('doctor')}/app"
    wrong_token = secret("ghp_doctor-wrong-token-Lm55")
    environ = ci_environ(
        tmp_path, image, CI_GITHUB_TOKEN=wrong_token, CI_GITHUB_API_URL=github.url,
        REGISTRY_USERNAME=htpasswd_registry.username, REGISTRY_PASSWORD=secret(WRONG_PASSWORD),
        DISK_MIN_FREE="1000TB",
    )
    result = ci_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    found = lines(result)
    assert found["settings"].startswith("ok "), found
    assert found["registry"].startswith(
        f"FAIL registry {htpasswd_registry.host} refused the credentials of user 'ci-user'"), found
    assert "-> check REGISTRY_USERNAME / REGISTRY_PASSWORD" in found["registry"]
    assert found["github"].startswith("FAIL GitHub ("), found
    assert "401" in found["github"] and "Commit statuses: Read and write" in found["github"]
    assert found["disk"].startswith("FAIL only "), found
    assert "below DISK_MIN_FREE=1000.0 TB" in found["disk"] and "docker image prune" in found["disk"]
    assert result.stdout.rstrip().endswith("not ready")
    assert_no_secret(result, wrong_token, WRONG_PASSWORD, WEBHOOK_SECRET, TOKEN)


def test_ci_doctor_with_the_right_login_may_push(
    tmp_path: Path, htpasswd_registry: AuthRegistry
) -> None:
    image = f"{htpasswd_registry.host}/{unique('doctor')}/app"
    environ = ci_environ(tmp_path, image, REGISTRY_USERNAME=htpasswd_registry.username,
                         REGISTRY_PASSWORD=htpasswd_registry.password)
    result = ci_agent("doctor", "--json", environ=environ, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert (data["ready"], data["exit_code"]) == (True, 0)
    checks = {item["check"]: item for item in data["checks"]}
    assert checks["registry"]["level"] == "ok"
    assert checks["registry"]["detail"].startswith(f"user 'ci-user' may push to {image}")
    assert checks["github"]["detail"] == "commit statuses are off (CI_GITHUB_TOKEN is not set)"
    assert tags_of(image, htpasswd_registry) == []
    assert_no_secret(result, htpasswd_registry.password)


@pytest.mark.parametrize(
    ("scopes", "level", "says"),
    [
        ("repo:status", "ok", "classic token with scopes repo:status: may write the commit statuses"),
        ("public_repo", "warn",
         "classic token with scopes public_repo: writes statuses only if octo/doctor-app is public"),
        ("read:org, gist", "FAIL", "classic token with scopes gist, read:org: none lets it write commit statuses"),
        (None, "ok", "the token reads the statuses of octo/doctor-app (a fine-grained token"),
    ],
)
def test_ci_doctor_reads_the_token_scopes(
    tmp_path: Path, registry: RegistryServer, scopes: str | None, level: str, says: str
) -> None:
    github = GitHubApi(GITHUB_REPO, TOKEN, scopes=scopes).start()
    try:
        environ = ci_environ(tmp_path, f"{registry.host}/{unique('doctor')}/app", CI_GITHUB_TOKEN=TOKEN,
                             CI_GITHUB_API_URL=github.url)
        result = ci_agent("doctor", environ=environ, cwd=tmp_path)
    finally:
        github.stop()
    found = lines(result)
    assert found["github"].startswith(f"{level} {says}"), found
    assert result.returncode == (1 if level == "FAIL" else 0), result.stdout
    assert_no_secret(result, TOKEN)


def test_ci_doctor_the_webhook_guard(tmp_path: Path, registry: RegistryServer) -> None:
    image = f"{registry.host}/{unique('doctor')}/app"
    unsigned = {k: v for k, v in ci_environ(tmp_path, image, CI_ALLOW_UNSIGNED="true").items()
                if k != "CI_WEBHOOK_SECRET"}
    result = ci_agent("doctor", environ=unsigned, cwd=tmp_path)
    assert lines(result)["webhook"].startswith("warn no CI_WEBHOOK_SECRET and CI_ALLOW_UNSIGNED=true"), result.stdout
    assert result.returncode == 0

    polled = {**unsigned, "CI_POLL_INTERVAL": "60"}
    result = ci_agent("doctor", environ=polled, cwd=tmp_path)
    assert lines(result)["webhook"] == "ok no CI_WEBHOOK_SECRET: the repository is polled every 60s instead"


def test_ci_doctor_checks_each_repository_of_the_repos_file(
    tmp_path: Path, registry: RegistryServer, htpasswd_registry: AuthRegistry, secret: Callable[[str], str]
) -> None:
    web, api = f"{registry.host}/{unique('doctor')}/web", f"{htpasswd_registry.host}/{unique('doctor')}/api"
    repos = tmp_path / "repos.toml"
    repos.write_text(
        f'[repos.web]\nrepo_url = "https://github.com/octo/web.git"\ngithub_repo = "octo/web"\nimage = "{web}"\n'
        f'webhook_secret = "{WEBHOOK_SECRET}"\n\n'
        f'[repos.api]\nrepo_url = "https://github.com/octo/api.git"\ngithub_repo = "octo/api"\nimage = "{api}"\n'
        f'poll_interval = 30\nregistry_username = "ci-user"\nregistry_password = "{secret(WRONG_PASSWORD)}"\n'
    )
    repos.chmod(0o600)
    # Polling without a secret needs CI_ALLOW_UNSIGNED (the start-up validation says so).
    environ = {"CI_REPOS_FILE": str(repos), "CI_ALLOW_UNSIGNED": "true", "LOG_DIR": str(tmp_path / "logs"),
               "STATE_DIR": str(tmp_path / "state")}
    result = ci_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    found = lines(result)
    assert found["settings"].startswith(f"ok valid (CI_REPOS_FILE={repos}): 2 repositories: web "), found
    assert found["registry [web]"].startswith(f"ok anonymous access may push to {web}"), found
    assert found["registry [api]"].startswith("FAIL "), found
    assert "-> check registry_username / registry_password" in found["registry [api]"]
    assert found["webhook [web]"].startswith("ok webhook_secret is set"), found
    assert found["webhook [api]"].startswith("ok no webhook_secret: the repository is polled every 30s"), found
    assert {f"clock [{registry.host}]", f"clock [{htpasswd_registry.host}]"} <= set(found)
    assert_no_secret(result, WEBHOOK_SECRET, WRONG_PASSWORD)


def test_ci_doctor_bad_settings_exit_2_and_still_checks_docker(tmp_path: Path) -> None:
    environ = {"CI_REPO_URL": "https://github.com/octo/app.git", "CI_IMAGE": "Bad/Image", "CI_WEBHOOK_SECRET":
               WEBHOOK_SECRET, "REGISTRY_PASSWORD": WRONG_PASSWORD}
    result = ci_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    found = lines(result)
    assert found["settings"].startswith("FAIL invalid settings: CI_IMAGE='Bad/Image'"), found
    assert found["docker"].startswith("ok "), found
    assert "Traceback" not in result.stderr
    assert_no_secret(result, WEBHOOK_SECRET, WRONG_PASSWORD)


def test_ci_doctor_an_engine_nobody_listens_for(tmp_path: Path, registry: RegistryServer) -> None:
    environ = ci_environ(tmp_path, f"{registry.host}/{unique('doctor')}/app",
                         DOCKER_HOST=f"tcp://127.0.0.1:{free_port()}")
    result = ci_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    found = lines(result)
    assert found["docker"].startswith("FAIL cannot reach the Docker Engine"), found
    assert "-> start dockerd" in found["docker"] and "DOCKER_HOST" in found["docker"]
    assert "disk" not in found  # nothing to read the free space of
    assert found["registry"].startswith("ok "), found  # the registry does not need the engine


# -- cd-agent doctor -------------------------------------------------------------------------------------


def cd_environ(tmp_path: Path, image: str, **overrides: str) -> dict[str, str]:
    return {
        "CD_IMAGE": image,
        "CD_CONTAINER_NAME": unique("doctor"),
        "LOG_DIR": str(tmp_path / "logs"),
        "STATE_DIR": str(tmp_path / "state"),
        **overrides,
    }


@pytest.fixture
def release(docker_client: Any, docker_janitor: DockerJanitor, registry: RegistryServer) -> str:
    """``REGISTRY/doctor-…/app`` with release 1.0.0 pushed (and still tagged on the engine)."""
    repository = f"{registry.host}/{unique('doctor')}/app"
    push_image(docker_client, docker_janitor, repository, ["1.0.0", "latest"])
    return repository


def test_cd_doctor_ready(tmp_path: Path, release: str, registry: RegistryServer) -> None:
    # The proxy image is any image the engine has: the release itself stands in for Caddy here.
    environ = cd_environ(tmp_path, release, CD_STRATEGY="blue-green", CD_PORTS=f"127.0.0.1:{free_port()}:8080",
                         CD_PROXY_IMAGE=f"{release}:1.0.0")
    result = cd_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    found = lines(result)
    assert found["settings"].startswith("ok valid (the environment): 1 app: "), found
    assert found["docker"].startswith("ok Docker "), found
    assert found["disk"].startswith("ok "), found
    assert found["registry"].startswith(f"ok anonymous access may pull {release}: 2 tag(s), newest release 1.0.0 "
                                        "(sha256:"), found
    assert found["proxy image"].startswith(f"ok {release}:1.0.0 is on the engine"), found
    assert found[f"clock [{registry.host}]"].startswith("ok in sync"), found


def test_cd_doctor_fails_on_a_missing_repository_and_proxy_image(tmp_path: Path, registry: RegistryServer) -> None:
    missing = f"{registry.host}/{unique('doctor')}/never-pushed"
    proxy = f"{unique('picicd-no-such-proxy')}:2"
    environ = cd_environ(tmp_path, missing, CD_STRATEGY="blue-green", CD_PORTS=f"127.0.0.1:{free_port()}:8080",
                         CD_PROXY_IMAGE=proxy)
    result = cd_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    found = lines(result)
    assert found["registry"].startswith(f"FAIL {missing} has no tags: the repository does not exist (yet)"), found
    assert found["proxy image"].startswith(f"FAIL {proxy} is not on the engine"), found
    assert f"-> `docker pull {proxy}`" in found["proxy image"]


def test_cd_doctor_wrong_credentials(
    tmp_path: Path, htpasswd_registry: AuthRegistry, docker_client: Any, docker_janitor: DockerJanitor,
    secret: Callable[[str], str],
) -> None:
    repository = f"{htpasswd_registry.host}/{unique('doctor')}/app"
    push_image(docker_client, docker_janitor, repository, ["1.0.0"], auth_config=htpasswd_registry.auth_config)
    environ = cd_environ(tmp_path, repository, REGISTRY_USERNAME="ci-user", REGISTRY_PASSWORD=secret(WRONG_PASSWORD))
    result = cd_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    found = lines(result)
    assert found["registry"].startswith(
        f"FAIL registry {htpasswd_registry.host} refused the credentials of user 'ci-user'"), found
    assert "a token that may pull from" in found["registry"]
    assert "proxy image" not in found  # a swap app has no proxy
    assert_no_secret(result, WRONG_PASSWORD)

    right = {**environ, "REGISTRY_PASSWORD": htpasswd_registry.password}
    result = cd_agent("doctor", "--json", environ=right, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {item["check"]: item for item in json.loads(result.stdout)["checks"]}
    assert checks["registry"]["detail"].startswith(f"user 'ci-user' may pull {repository}: 1 tag(s)")
    assert_no_secret(result, htpasswd_registry.password)


def test_cd_doctor_an_engine_nobody_listens_for(tmp_path: Path, release: str) -> None:
    environ = cd_environ(tmp_path, release, CD_STRATEGY="blue-green", CD_PORTS=f"127.0.0.1:{free_port()}:8080",
                         DOCKER_HOST=f"tcp://127.0.0.1:{free_port()}")
    result = cd_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    found = lines(result)
    assert found["docker"].startswith("FAIL cannot reach the Docker Engine"), found
    assert found["proxy image"].startswith("FAIL caddy:2 not looked for: the Docker Engine is unreachable"), found
    assert found["registry"].startswith("ok "), found


def test_cd_doctor_checks_each_app_of_the_apps_file(
    tmp_path: Path, release: str, registry: RegistryServer
) -> None:
    missing = f"{registry.host}/{unique('doctor')}/api"
    apps = tmp_path / "apps.toml"
    apps.write_text(f'[apps.web]\nimage = "{release}"\n\n[apps.api]\nimage = "{missing}"\n')
    environ = {"CD_APPS_FILE": str(apps), "LOG_DIR": str(tmp_path / "logs"), "STATE_DIR": str(tmp_path / "state")}
    result = cd_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    found = lines(result)
    assert found["settings"].startswith(f"ok valid (CD_APPS_FILE={apps}): 2 apps: web "), found
    assert found["registry [web]"].startswith("ok "), found
    assert found["registry [api]"].startswith(f"FAIL {missing} has no tags"), found


def test_cd_doctor_swarm_needs_a_manager(tmp_path: Path, release: str, docker_client: Any) -> None:
    swarm = docker_client.info().get("Swarm") or {}
    if swarm.get("ControlAvailable"):
        pytest.skip("the shared engine is a swarm manager now (another session's swarm tests)")
    environ = cd_environ(tmp_path, release, CD_STRATEGY="swarm", CD_PORTS="")
    result = cd_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    found = lines(result)["swarm"]
    state = swarm.get("LocalNodeState") or "inactive"
    assert found.startswith(f"FAIL this engine is not a swarm manager ({state}): CD_STRATEGY=swarm creates and "
                            f"updates service {environ['CD_CONTAINER_NAME']}"), found
    assert "-> `docker swarm init`" in found


def test_cd_doctor_swarm_service_on_a_manager(
    swarm_mode: None, tmp_path: Path, release: str, docker_client: Any
) -> None:
    environ = cd_environ(tmp_path, release, CD_STRATEGY="swarm", CD_PORTS="", CD_REPLICAS="2")
    service = environ["CD_CONTAINER_NAME"]
    result = cd_agent("doctor", environ=environ, cwd=tmp_path)
    assert lines(result)["swarm"] == (
        f"ok this engine is a swarm manager; no service {service} yet: the first deploy creates it (2 replica(s))"
    ), result.stdout

    docker_client.services.create(f"{release}:1.0.0", name=service, mode={"Replicated": {"Replicas": 1}})
    try:
        result = cd_agent("doctor", environ=environ, cwd=tmp_path)
    finally:
        docker_client.api.remove_service(service)
    found = lines(result)["swarm"]
    assert found.startswith(f"ok this engine is a swarm manager; service {service} runs {release}:1.0.0"), found
    assert found.endswith("(1 replica(s))"), found


def compose_file(folder: Path, service: str, image: str) -> Path:
    path = folder / "compose.yml"
    path.write_text(f'version: "3.8"\nservices:\n  {service}:\n    image: {image}\n  db:\n    image: busybox\n')
    return path


def test_cd_doctor_compose_says_which_compose_and_checks_the_service(tmp_path: Path, release: str) -> None:
    from dataclasses import replace

    from cd_agent.apps import load_targets
    from cd_agent.compose_project import default_project
    from cd_agent.doctor import compose_finding

    file = compose_file(tmp_path, "web", f"{release}:1.0.0")
    environ = cd_environ(tmp_path, release, CD_STRATEGY="compose", CD_COMPOSE_FILE=str(file),
                         CD_COMPOSE_SERVICE="web", CD_PORTS="")
    result = cd_agent("doctor", environ=environ, cwd=tmp_path)
    found = lines(result)["compose"]
    assert found.startswith(("ok docker compose 2.", "ok docker-compose 1.")), found
    assert f"; {file}: project {default_project(file)}, " in found, found
    assert found.endswith(f"service web runs an image of {release}"), found

    # What the settings of today's agent already refuse at start-up, the finding names too (compose config).
    target = load_targets(clean_environ(environ)).apps[0]
    missing = compose_finding(replace(target, compose_service="api"))
    assert missing.level == "FAIL", missing
    assert "the compose project has no service 'api' (its services: db, web)" in missing.detail
    assert "-f FILE config` shows the project" in missing.fix
    built = compose_finding(replace(target, compose_service="db"))
    assert built.level == "FAIL" and "runs image busybox, not CD_IMAGE" in built.detail, built


def test_cd_doctor_checks_each_mail_configuration_of_the_apps_once(
    tmp_path: Path, release: str, start_smtp_server: Callable[..., Any], secret: Callable[[str], str],
) -> None:
    server = start_smtp_server(auth=(SMTP_USER, secret(SMTP_PASSWORD)))
    apps = tmp_path / "apps.toml"
    apps.write_text(
        f'[apps.web]\nimage = "{release}"\nnotify_to = ["web-team@example.org"]\n\n'
        f'[apps.api]\nimage = "{release}"\n\n'
        f'[apps.worker]\nimage = "{release}"\nnotify_to = ["web-team@example.org"]\n'
    )
    environ = {"CD_APPS_FILE": str(apps), "LOG_DIR": str(tmp_path / "logs"), "STATE_DIR": str(tmp_path / "state"),
               "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(server.port), "SMTP_SECURITY": "none",
               "SMTP_USERNAME": SMTP_USER, "SMTP_PASSWORD": SMTP_PASSWORD, "NOTIFY_FROM": "pi@example.org"}
    result = cd_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    found = lines(result)
    assert found["email [web, worker]"] == (
        f"ok 127.0.0.1:{server.port} (none) takes the login of 'pi-alerts'; failures are mailed to "
        "web-team@example.org"
    ), found
    # api has no notify_to and there is no NOTIFY_TO: its failures would be mailed to nobody
    assert found["email [api]"].startswith("FAIL invalid settings: NOTIFY_TO is required when SMTP_HOST is set"), found
    assert [check for check in found if check.startswith("email")] == ["email [web, worker]", "email [api]"]
    assert server.messages == []
    assert_no_secret(result, SMTP_PASSWORD)


def test_cd_doctor_bad_settings_exit_2(tmp_path: Path) -> None:
    environ = {"CD_IMAGE": "127.0.0.1:5000/o/app", "CD_CONTAINER_NAME": "app", "CD_PORTS": "8080:80:90",
               "REGISTRY_PASSWORD": WRONG_PASSWORD}
    result = cd_agent("doctor", environ=environ, cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    found = lines(result)
    assert found["settings"].startswith("FAIL invalid settings: CD_PORTS='8080:80:90'"), found
    assert found["docker"].startswith("ok "), found
    assert_no_secret(result, WRONG_PASSWORD)


def test_ci_doctor_a_build_engine_with_the_local_fallback(tmp_path: Path, registry: RegistryServer) -> None:
    closed = f"tcp://127.0.0.1:{free_port()}"
    environ = ci_environ(tmp_path, f"{registry.host}/{unique('doctor')}/app", CI_BUILD_DOCKER_HOST=closed)
    result = ci_agent("doctor", environ=environ, cwd=tmp_path)
    found = lines(result)
    assert result.returncode == 1, result.stdout
    assert found[f"docker [{closed}]"].startswith(f"FAIL cannot reach the build engine {closed} (CI_BUILD_DOCKER_HOST)")
    assert "-> start dockerd" in found[f"docker [{closed}]"]

    result = ci_agent("doctor", environ={**environ, "CI_BUILD_FALLBACK_LOCAL": "true"}, cwd=tmp_path)
    found = lines(result)
    assert result.returncode == 0, result.stdout
    assert found[f"docker [{closed}]"].startswith("warn cannot reach the build engine"), found
    assert "until then its runs build on the local engine" in found[f"docker [{closed}]"]
    assert found["docker"].startswith("ok the local Docker engine"), found
    assert found["disk"].startswith("ok "), found


def test_doctor_against_a_token_registry(
    tmp_path: Path, token_registry: AuthRegistry, docker_client: Any, docker_janitor: DockerJanitor
) -> None:
    repository = f"{token_registry.host}/{unique('doctor')}/app"
    environ = ci_environ(tmp_path, repository, REGISTRY_USERNAME=token_registry.username,
                         REGISTRY_PASSWORD=token_registry.password)
    result = ci_agent("doctor", environ=environ, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result)["registry"].startswith(f"ok user 'cd-user' may push to {repository}"), result.stdout
    # The token request carries the registry's own challenge scope, whose actions the distribution registry
    # lists in no fixed order (push,pull or pull,push).
    asked = {(scope.rsplit(":", 1)[0], frozenset(scope.rsplit(":", 1)[1].split(",")))
             for scope in (r["scope"] for r in token_registry.token_requests)}
    assert (f"repository:{repository.split('/', 1)[1]}", frozenset({"pull", "push"})) in asked, asked
    assert tags_of(repository, token_registry) == []
    assert_no_secret(result, token_registry.password)

    push_image(docker_client, docker_janitor, repository, ["2.0.0"], auth_config=token_registry.auth_config)
    anonymous = cd_environ(tmp_path, repository)
    result = cd_agent("doctor", environ=anonymous, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert lines(result)["registry"].startswith(f"FAIL registry {token_registry.host} refused anonymous access"), \
        result.stdout
    signed_in = {**anonymous, "REGISTRY_USERNAME": token_registry.username,
                 "REGISTRY_PASSWORD": token_registry.password}
    result = cd_agent("doctor", environ=signed_in, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result)["registry"].startswith(f"ok user 'cd-user' may pull {repository}: 1 tag(s), newest release "
                                                "2.0.0"), result.stdout
    assert_no_secret(result, token_registry.password)


@pytest.mark.parametrize("run", [ci_agent, cd_agent])
def test_doctor_help(tmp_path: Path, run: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    result = run("doctor", "--help", environ={}, cwd=tmp_path)
    assert result.returncode == 0
    assert "--json" in result.stdout and "Exits 0 when ready" in " ".join(result.stdout.split())


# -- email (both agents read the same SMTP_* settings) -------------------------------------------------------

SMTP_USER, SMTP_PASSWORD = "pi-alerts", "doctor-smtp-secret-Rt6"


@pytest.mark.parametrize("run", [ci_agent, cd_agent])
def test_doctor_logs_in_to_the_mail_server_without_sending(
    tmp_path: Path, registry: RegistryServer, start_smtp_server: Callable[..., Any], secret: Callable[[str], str],
    run: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    server = start_smtp_server(auth=(SMTP_USER, secret(SMTP_PASSWORD)))
    image = f"{registry.host}/{unique('doctor')}/app"
    base = ci_environ(tmp_path, image) if run is ci_agent else cd_environ(tmp_path, image)
    smtp = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(server.port), "SMTP_SECURITY": "none",
            "SMTP_USERNAME": SMTP_USER, "SMTP_PASSWORD": SMTP_PASSWORD, "NOTIFY_FROM": "pi@example.org",
            "NOTIFY_TO": "me@example.org"}

    result = run("doctor", environ={**base, **smtp}, cwd=tmp_path)
    assert lines(result)["email"] == (
        f"ok 127.0.0.1:{server.port} (none) takes the login of 'pi-alerts'; failures are mailed to me@example.org"
    ), result.stdout
    assert server.messages == []

    wrong = secret("doctor-smtp-wrong-Yb2")
    result = run("doctor", environ={**base, **smtp, "SMTP_PASSWORD": wrong}, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    found = lines(result)["email"]
    assert found.startswith(f"FAIL cannot log in to 127.0.0.1:{server.port}: login as 'pi-alerts' refused (535 "), found
    assert "app password" in found
    assert_no_secret(result, wrong, SMTP_PASSWORD)

    server.stop()
    result = run("doctor", environ={**base, **smtp}, cwd=tmp_path)
    assert lines(result)["email"].startswith(f"FAIL cannot log in to 127.0.0.1:{server.port}: "), result.stdout
    assert server.messages == []
    assert_no_secret(result, SMTP_PASSWORD)

    result = run("doctor", environ=base, cwd=tmp_path)
    assert lines(result)["email"] == "ok email is off (SMTP_HOST is not set)"
