"""A real SMTP server (aiosmtpd) on a loopback port, collecting what it receives.

``smtp_server`` is a plain server (no TLS, no AUTH). ``start_smtp_server(...)`` starts others: with
AUTH required (``auth=(user, password)``), with STARTTLS or implicit TLS (``tls="starttls"|"ssl"``,
using a self-signed certificate for 127.0.0.1 that ``server.client_ssl_context()`` trusts).
``server.stop()`` takes it down for failure tests; every server is stopped at teardown.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.polling import wait_for
from tests.support.ports import free_port, port_open

TlsMode = Literal["none", "starttls", "ssl"]


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, as PEM files."""

    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert_path))


def make_certificate(directory: Path) -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pi-cicd test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Certificate(cert_path, key_path)


@dataclass(frozen=True)
class ReceivedMail:
    message: EmailMessage
    mail_from: str
    recipients: list[str]
    authenticated_as: str | None


class _Handler:
    """aiosmtpd hooks: refuse MAIL before AUTH when a login is required, keep every message."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_MAIL(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        # aiosmtpd's own auth_required warns unless TLS is required too; plain loopback tests need neither.
        if self.server.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or envelope.content
        raw = data if isinstance(data, bytes) else str(data).encode()
        raw = raw.replace(b"\r\n", b"\n")  # SMTP's wire line ends; tests compare with Python text
        message = email.message_from_bytes(raw, policy=email.policy.default)
        login = session.auth_data  # what _authenticate returned: the user name
        user = login.decode() if isinstance(login, bytes) else None
        mail = ReceivedMail(message, str(envelope.mail_from), [str(r) for r in envelope.rcpt_tos], user)
        with self.server.lock:
            self.server.received.append(mail)
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    """An aiosmtpd server on ``127.0.0.1:port``; ``received`` fills from the server's thread."""

    port: int
    auth: tuple[str, str] | None = None
    tls: TlsMode = "none"
    certificate: Certificate | None = None
    host: str = "127.0.0.1"
    received: list[ReceivedMail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    @property
    def messages(self) -> list[EmailMessage]:
        with self.lock:
            return [mail.message for mail in self.received]

    @property
    def running(self) -> bool:
        return self._controller is not None

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's certificate (and checks the host name)."""
        if self.certificate is None:
            raise RuntimeError("this server has no TLS certificate")
        return self.certificate.client_context()

    def _authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if self.auth is None or not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = self.auth
        ok = data.login == user.encode() and data.password == password.encode()
        return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)

    def start(self) -> None:
        if self._controller is not None:
            return
        kwargs: dict[str, Any] = {}
        if self.auth is not None:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        if self.tls != "none":
            if self.certificate is None:
                raise ValueError(f"tls={self.tls!r} needs a certificate")
            if self.tls == "ssl":
                kwargs["ssl_context"] = self.certificate.server_context()
            else:
                kwargs["tls_context"] = self.certificate.server_context()
        controller = Controller(_Handler(self), hostname=self.host, port=self.port, **kwargs)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Take the server down; connecting to ``port`` is refused afterwards."""
        if self._controller is None:
            return
        self._controller.stop()
        self._controller = None
        wait_for(lambda: not port_open(self.port, self.host), timeout=10, what=f"SMTP port {self.port} to close")

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Wait until at least ``count`` messages arrived and return them all."""
        what = f"{count} message(s) on SMTP port {self.port}"
        wait_for(lambda: len(self.messages) >= count, timeout=timeout, what=what)
        return self.messages


StartSmtpServer = Callable[..., SmtpServer]


@pytest.fixture(scope="session")
def smtp_certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture
def start_smtp_server(smtp_certificate: Certificate) -> Iterator[StartSmtpServer]:
    """Factory: ``start_smtp_server(auth=("user", "pw"), tls="starttls")``; all are stopped at teardown."""
    servers: list[SmtpServer] = []

    def start(*, auth: tuple[str, str] | None = None, tls: TlsMode = "none") -> SmtpServer:
        server = SmtpServer(port=free_port(), auth=auth, tls=tls, certificate=smtp_certificate)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_server(start_smtp_server: StartSmtpServer) -> SmtpServer:
    """A plain SMTP server (no TLS, no AUTH) on a free loopback port."""
    return start_smtp_server()
