"""Real registries that want credentials, and a helper to push test images to any registry.

``htpasswd_registry``: ``docker-registry`` with ``auth.htpasswd`` (Basic auth, bcrypt password file).
``token_registry``: ``docker-registry`` with ``auth.token``, trusting a self-signed certificate, plus a
token endpoint of ours (a thread on a loopback port) that checks Basic credentials and issues RS256
JWTs the way Docker Hub's auth.docker.io does. Both listen on 127.0.0.1 only and stop at session end.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import shutil
import subprocess
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.docker_env import DockerJanitor, build_context_tar, busybox_dockerfile
from tests.support.polling import SHUTDOWN_POLL
from tests.support.registry_server import RegistryServer, start_registry

SERVICE = "picicd-test-registry"
ISSUER = "picicd-test-token-issuer"


@dataclass
class AuthRegistry:
    """A running registry that wants ``username`` / ``password``."""

    server: RegistryServer
    username: str
    password: str
    token_requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def auth_config(self) -> dict[str, str]:
        """For the Docker SDK: ``images.push(..., auth_config=registry.auth_config)``."""
        return {"username": self.username, "password": self.password}


def push_image(
    docker_client: Any,
    janitor: DockerJanitor,
    repository: str,
    tags: list[str],
    *,
    labels: Mapping[str, str] | None = None,
    auth_config: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build one busybox image, push it as each of ``tags`` to ``repository`` (``host:port/name``) and
    return the digest ``docker push`` reported for each tag."""
    extra = "\n".join(f"LABEL {json.dumps(key)}={json.dumps(value)}" for key, value in (labels or {}).items())
    # A unique file makes a unique image, so digests never collide between tests.
    files = {"www/index.html": uuid.uuid4().hex}
    image, _ = docker_client.images.build(
        fileobj=build_context_tar(busybox_dockerfile(extra=extra), files), custom_context=True, rm=True
    )
    digests: dict[str, str] = {}
    for tag in tags:
        image.tag(repository, tag=tag)
        janitor.images.add(f"{repository}:{tag}")
        kwargs: dict[str, Any] = {"tag": tag, "stream": True, "decode": True}
        if auth_config is not None:
            kwargs["auth_config"] = dict(auth_config)
        for line in docker_client.images.push(repository, **kwargs):
            if "error" in line:
                raise AssertionError(f"docker push {repository}:{tag} failed: {line['error']}")
            aux = line.get("aux") or {}
            if aux.get("Digest"):
                digests[tag] = aux["Digest"]
    return digests


# -- htpasswd ---------------------------------------------------------------------------------------


def htpasswd_line(username: str, password: str) -> str:
    """``user:$2y$...`` as the registry's htpasswd file wants it (bcrypt only).

    Uses apache2-utils' ``htpasswd`` when installed, else the ``bcrypt`` package, else ``crypt``
    (Python < 3.13 on glibc with blowfish support).
    """
    htpasswd = shutil.which("htpasswd")
    if htpasswd:
        result = subprocess.run(
            [htpasswd, "-nbB", "-C", "4", username, password], check=True, capture_output=True, text=True
        )
        return result.stdout.strip()
    try:
        bcrypt = importlib.import_module("bcrypt")
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            crypt = importlib.import_module("crypt")
        return f"{username}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{username}:{hashed}"


def start_htpasswd_registry(root: Path, username: str, password: str) -> AuthRegistry:
    root.mkdir(parents=True, exist_ok=True)
    htpasswd = root / "htpasswd"
    htpasswd.write_text(htpasswd_line(username, password) + "\n")
    auth_yaml = f"auth:\n  htpasswd:\n    realm: picicd-test\n    path: {htpasswd}\n"
    return AuthRegistry(start_registry(root, auth_yaml), username, password)


@pytest.fixture(scope="session")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    registry = start_htpasswd_registry(tmp_path_factory.mktemp("htpasswd-registry"), "ci-user", "basic-pass-123")
    yield registry
    registry.server.stop()


# -- bearer tokens ----------------------------------------------------------------------------------


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """The key id the registry looks up a JWT's ``kid`` by: base32 of the first 30 bytes of
    sha256(DER SubjectPublicKeyInfo), unpadded, in groups of 4 joined by ':'."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def self_signed_certificate(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def requested_access(scopes: list[str]) -> list[dict[str, Any]]:
    """``repository:o/app:pull,push`` -> ``[{"type": "repository", "name": "o/app", "actions": ["pull", "push"]}]``."""
    access = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind and name:
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
    return access


class TokenEndpoint:
    """The realm of a token-auth registry: Basic credentials in, RS256 JWT out; anonymous gets no access."""

    def __init__(self, key: rsa.RSAPrivateKey, username: str, password: str, log: list[dict[str, str]]) -> None:
        self.key = key
        self.kid = libtrust_key_id(key.public_key())
        self.expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.username = username
        self.log = log
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs=SHUTDOWN_POLL, name="token-endpoint", daemon=True
        )

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def issue(self, authorization: str | None, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        self.log.append({"authorization": "yes" if authorization else "no", "scope": " ".join(query.get("scope", []))})
        if authorization is not None and authorization != self.expected:
            return 401, {"details": "incorrect username or password"}
        now = datetime.now(UTC)
        claims = {
            "iss": ISSUER,
            "sub": self.username if authorization else "",
            "aud": query.get("service", [SERVICE])[0],
            "iat": now,
            "nbf": now - timedelta(seconds=5),
            "exp": now + timedelta(minutes=5),
            "jti": uuid.uuid4().hex,
            "access": requested_access(query.get("scope", [])) if authorization else [],
        }
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
        return 200, {"token": token, "access_token": token, "expires_in": 300, "issued_at": now.isoformat()}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = endpoint.issue(self.headers.get("Authorization"), parse_qs(urlsplit(self.path).query))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are recorded in endpoint.log; stderr noise helps nobody

        return Handler


@dataclass
class TokenRegistry(AuthRegistry):
    endpoint: TokenEndpoint | None = None

    def stop(self) -> None:
        self.server.stop()
        if self.endpoint is not None:
            self.endpoint.stop()


def start_token_registry(root: Path, username: str, password: str) -> TokenRegistry:
    root.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bundle = root / "token-ca.pem"
    bundle.write_bytes(self_signed_certificate(key))
    log: list[dict[str, str]] = []
    endpoint = TokenEndpoint(key, username, password, log)
    endpoint.start()
    auth_yaml = (
        "auth:\n  token:\n"
        f"    realm: {endpoint.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {bundle}\n"
    )
    try:
        server = start_registry(root, auth_yaml)
    except BaseException:
        endpoint.stop()
        raise
    return TokenRegistry(server, username, password, token_requests=log, endpoint=endpoint)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    registry = start_token_registry(tmp_path_factory.mktemp("token-registry"), "cd-user", "token-pass-456")
    yield registry
    registry.stop()
