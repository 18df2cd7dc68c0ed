"""A hostile registry: it points the agent's registry client at other hosts, or pages forever; and a
registry offering a release this machine cannot run (a real multi-platform index without its platform).

Real sockets on loopback: each "registry" is a small HTTP server in this process, and every host the
client must not trust is another server on another port that records each request and its
``Authorization`` header. The link scenario drives a real ``cd-agent deploy`` process.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr

from shared.errors import RegistryAuthError
from shared.platforms import can_run, platform
from shared.registry import MAX_TAG_PAGES, RegistryClient, parse_image_ref
from shared.testing import capture_logs
from tests.support.cd_apps import CdWorld, WatchProcess, cd_agent, state_json, version_of
from tests.support.docker_env import unique
from tests.support.oci_index import AMD64, ARM64, ARM_V7, S390X, Entry, Publisher, engine_of
from tests.support.polling import SHUTDOWN_POLL, wait_for
from tests.support.smtp_server import SmtpServer

USER = "deployer"
PASSWORD = "hostile-registry-test-password-7f3a"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: object | None = None


@dataclass(frozen=True)
class Seen:
    path: str
    authorization: str | None


# (path, query, Authorization header) -> the answer
Answering = Callable[[str, dict[str, str], str | None], Answer]


class Host:
    """One HTTP server on 127.0.0.1; ``answer(path, query, authorization)`` decides each reply."""

    def __init__(self, answer: Answering) -> None:
        self.seen: list[Seen] = []
        self._answer = answer
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                url = urlsplit(self.path)
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                authorization = self.headers.get("Authorization")
                host.seen.append(Seen(url.path, authorization))
                answer = host._answer(url.path, query, authorization)
                body = b"" if answer.body is None else json.dumps(answer.body).encode()
                self.send_response(answer.status)
                for key, value in {"Content-Type": "application/json", **answer.headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=SHUTDOWN_POLL, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    started: list[Host] = []
    yield started
    for host in started:
        host.close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def thief(host_ref: list[Host]) -> Answering:
    """The host that wants the credentials: its 401 names a token realm on itself."""

    def answer(path: str, query: dict[str, str], authorization: str | None) -> Answer:
        if path == "/token":
            return Answer(200, body={"token": "stolen"})
        realm = f"http://{host_ref[0].address}/token"
        return Answer(401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="x"'})

    return answer


def basic_registry(then: Callable[[str, dict[str, str]], Answer]) -> Answering:
    """A registry that wants Basic credentials (so the client has them ready), then answers ``then``."""

    def answer(path: str, query: dict[str, str], authorization: str | None) -> Answer:
        if authorization != basic(USER, PASSWORD):
            return Answer(401, {"WWW-Authenticate": 'Basic realm="hostile"'})
        return then(path, query)

    return answer


def start_thief(hosts: list[Host]) -> Host:
    ref: list[Host] = []
    host = Host(thief(ref))
    ref.append(host)
    hosts.append(host)
    return host


@pytest.mark.reliability(
    "The registry's tags/list answers `Link: rel=\"next\"` pointing at another host (another loopback port), "
    "whose 401 names a token realm on itself; a real `cd-agent deploy` with REGISTRY_USERNAME/PASSWORD",
    "The link is refused with an error naming the other host; that host receives no request and no credentials",
)
def test_a_tag_page_link_to_another_host_is_refused_and_gets_no_credentials(
    hosts: list[Host], tmp_path: Path, observed: Callable[[str], None], secret: Callable[[str], str],
    produced: Callable[[str, str | bytes], None],
) -> None:
    secret(PASSWORD)
    other = start_thief(hosts)

    def tags(path: str, query: dict[str, str]) -> Answer:
        link = f'<http://{other.address}/v2/o/app/tags/list?last=1.0.0>; rel="next"'
        return Answer(200, {"Link": link}, {"name": "o/app", "tags": ["1.0.0"]})

    registry = Host(basic_registry(tags))
    hosts.append(registry)
    environ = {
        "CD_IMAGE": f"{registry.address}/o/app",
        "CD_CONTAINER_NAME": unique("picicd-abuse"),
        "REGISTRY_USERNAME": USER,
        "REGISTRY_PASSWORD": PASSWORD,
        "LOG_DIR": str(tmp_path / "logs"),
        "STATE_DIR": str(tmp_path / "state"),
    }
    result = cd_agent("deploy", environ=environ, cwd=tmp_path)
    produced("cd-agent deploy stderr", result.stderr)
    produced("cd-agent deploy stdout", result.stdout)
    assert result.returncode == 1, result.stderr
    assert f"tag page link to another host, http://{other.address}" in result.stderr
    assert other.seen == []
    assert any(seen.authorization == basic(USER, PASSWORD) for seen in registry.seen)
    observed(
        f"exit 1: {result.stderr.strip().splitlines()[-1][:160]}; the other host saw {len(other.seen)} requests; "
        f"the registry saw {len(registry.seen)}"
    )


@pytest.mark.reliability(
    "The registry redirects tags/list (302) to another host whose 401 names a bearer-token realm on itself",
    "No request to the other host carries credentials and its token realm is never asked; a clear auth error",
)
def test_a_redirect_to_another_host_does_not_earn_it_the_credentials(
    hosts: list[Host], observed: Callable[[str], None], secret: Callable[[str], str]
) -> None:
    secret(PASSWORD)
    other = start_thief(hosts)
    registry = Host(basic_registry(lambda path, query: Answer(302, {"Location": f"http://{other.address}{path}"})))
    hosts.append(registry)
    client = RegistryClient(parse_image_ref(f"{registry.address}/o/app"), username=USER, password=SecretStr(PASSWORD))
    with client, pytest.raises(RegistryAuthError) as error:
        client.list_tags()
    assert f"redirected to http://{other.address}, which asked for credentials" in str(error.value)
    assert other.seen, "the redirect was followed"
    assert [seen.authorization for seen in other.seen] == [None] * len(other.seen)
    assert all(seen.path != "/token" for seen in other.seen)
    observed(f"{error.value}; the other host saw {len(other.seen)} request(s), none with credentials")


@pytest.mark.reliability(
    "A registry whose tags/list pages never end (every page links to a next one)",
    f"The client stops after {MAX_TAG_PAGES} pages with one warning and returns the tags it read",
)
def test_endless_tag_pages_stop_at_the_cap(hosts: list[Host], observed: Callable[[str], None]) -> None:
    def pages(path: str, query: dict[str, str], authorization: str | None) -> Answer:
        page = int(query.get("page", "0"))
        link = f'</v2/o/app/tags/list?n=10&page={page + 1}>; rel="next"'
        return Answer(200, {"Link": link}, {"tags": [f"{page}.0.{n}" for n in range(10)]})

    registry = Host(pages)
    hosts.append(registry)
    with capture_logs("WARNING") as logs, RegistryClient(parse_image_ref(f"{registry.address}/o/app")) as client:
        tags = client.list_tags(page_size=10)
    assert len(registry.seen) == MAX_TAG_PAGES
    assert len(tags) == MAX_TAG_PAGES * 10
    [warning] = [entry.message for entry in logs]
    assert "stopped there" in warning
    observed(f"{len(registry.seen)} pages requested, {len(tags)} tags returned; warning: {warning}")


@pytest.fixture
def publisher(cd_world: CdWorld) -> Iterator[Publisher]:
    publisher = Publisher.for_image(cd_world.releases.repository)
    yield publisher
    publisher.close()


def app_entry(world: CdWorld, publisher: Publisher, version: str) -> Entry:
    """The real app of ``version`` for this machine, pushed under a tag no watcher deploys, as an OCI manifest."""
    staging = f"staging-{version.replace('.', '-')}"
    world.releases.push(staging, env={"APP_VERSION": version})
    world.janitor.images.add(f"{world.releases.repository}:{version}")
    return publisher.oci_copy(staging)


def subjects(smtp: SmtpServer) -> list[str]:
    return [str(message["Subject"]) for message in smtp.messages]


@pytest.mark.docker
@pytest.mark.reliability(
    "The registry offers release 1.1.0 only as an OCI index for two other platforms (linux/arm64 and linux/arm/v7 "
    "on an amd64 machine; buildx-style attestations) to a real `cd-agent watch` serving 1.0.0; then 1.2.0 as an "
    "index for this machine and another",
    "1.1.0 is not pulled and quarantined with one error line and one email naming what it offers; 1.0.0 keeps "
    "serving and 1.1.0 is not tried again on later polls; 1.2.0 is deployed",
)
def test_a_release_without_this_platform_is_refused_once_and_a_newer_one_is_deployed(
    cd_world: CdWorld, publisher: Publisher, smtp_server: SmtpServer, watches: list[WatchProcess],
    docker_client: Any, observed: Callable[[str], None],
) -> None:
    world = cd_world
    world.use_smtp(smtp_server.host, smtp_server.port)
    host = engine_of(docker_client)
    # Two platforms this machine cannot run (arm64 and arm/v7 on the usual amd64 test machine).
    foreign = [item for item in (ARM64, ARM_V7, AMD64, S390X) if not can_run(host, platform(**item))][:2]
    offers = " and ".join(sorted("/".join(item.values()) for item in foreign))
    world.releases.push("1.0.0")
    world.janitor.images.add(f"{world.releases.repository}:1.1.0")

    watch = WatchProcess(world.environ(CD_POLL_INTERVAL="0.5"), world.root)
    watches.append(watch)
    wait_for(lambda: world.served() == "1.0.0", timeout=90, what="1.0.0 served")
    smtp_server.wait_for_messages(1)

    # 1.1.0 as buildx pushes it for two other platforms: no image for this machine
    publisher.index("1.1.0", publisher.with_attestations([publisher.foreign_image(item) for item in foreign]))

    problem = f"1.1.0 has no {host} image; it offers {offers}"
    wait_for(lambda: "1.1.0" in {q["version"] for q in state_json(world)["quarantined"]}, timeout=60,
             what="1.1.0 quarantined")
    smtp_server.wait_for_messages(2)
    assert subjects(smtp_server)[1] == f"[{world.name}] not deployed: {problem}"
    assert "1.0.0 keeps running" in str(smtp_server.messages[1].get_content())

    # later polls leave 1.1.0 alone: no deploy, no pull, no second line or email
    polls = {state_json(world)["last_poll_at"]}

    def three_more_polls() -> bool:
        polls.add(state_json(world)["last_poll_at"])
        return len(polls) > 3

    wait_for(three_more_polls, timeout=30, what="3 more polls")
    assert world.served() == "1.0.0"
    assert version_of(state_json(world)["current"]) == "1.0.0"
    said = [line for line in watch.lines("1.1.0") if "| INFO " not in line]  # warnings and errors
    assert len(said) == 1, watch.log()
    assert "ERROR" in said[0] and problem in said[0] and "1.0.0 keeps running" in said[0]
    assert not watch.lines("deploying 1.1.0")
    assert docker_client.images.list(name=f"{world.releases.repository}:1.1.0") == []
    assert len(smtp_server.messages) == 2
    [quarantine] = state_json(world)["quarantined"]
    assert quarantine["reason"] == f"platform: {problem}"

    # 1.2.0 as buildx pushes it for this machine and another: deployed
    entries = [app_entry(world, publisher, "1.2.0"), publisher.foreign_image(foreign[0])]
    publisher.index("1.2.0", publisher.with_attestations(entries))
    wait_for(lambda: world.served() == "1.2.0", timeout=90, what="1.2.0 (multi-platform) served")
    smtp_server.wait_for_messages(3)
    assert subjects(smtp_server)[2] == f"[{world.name}] deployed 1.2.0"
    assert len([line for line in watch.lines("1.1.0") if "| INFO " not in line]) == 1
    assert watch.stop() == 0
    assert "Traceback" not in watch.log()
    observed(
        f"email '{subjects(smtp_server)[1]}'; {len(polls)} polls after it without a pull, a second line or email; "
        f"1.0.0 served throughout the checks; then '{subjects(smtp_server)[2]}'"
    )
