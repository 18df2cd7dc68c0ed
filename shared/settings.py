"""Settings read once at start-up from the environment and a ``.env`` file.

Every field's environment variable is its name in upper case (``smtp_port`` is ``SMTP_PORT``,
``ci_repo_url`` is ``CI_REPO_URL``), so an error message can always name the variable the user has
to fix. Secrets are ``pydantic.SecretStr``: their ``repr`` and ``str`` are masked, and
``secret_values()`` lists them for the log redactor.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from shared.errors import SettingsError
from shared.notify_urls import url_secret_parts

SmtpSecurity = Literal["starttls", "ssl", "none"]


# Keys of a field's ``json_schema_extra`` that the reference pages (shared/reference.py) read.
SHOWN_DEFAULT = "shown_default"
SHOWN_VALUE = "shown_value"


def shown(default: str | None = None, *, value: str | None = None) -> dict[str, JsonValue]:
    """A field's ``json_schema_extra``: how its default and the values it takes read in the reference, where
    the model's own default or type would say less (``None`` that means ``STATE_DIR/work``, bytes as ``2GB``)."""
    extra: dict[str, JsonValue] = {}
    if default is not None:
        extra[SHOWN_DEFAULT] = default
    if value is not None:
        extra[SHOWN_VALUE] = value
    return extra


def field_description(cls: type[BaseModel], name: str) -> str | None:
    """The one-line description of setting ``name``: the model's field, else the one it redefines.

    An agent redefines a shared field to change its default (``LOG_DIR``); the meaning stays the base's.
    """
    for base in cls.__mro__:
        fields = getattr(base, "model_fields", None)
        if isinstance(fields, dict) and name in fields and fields[name].description:
            return str(fields[name].description)
    return None


def field_extra(cls: type[BaseModel], name: str, key: str) -> str | None:
    """``key`` of field ``name``'s ``json_schema_extra`` (see :func:`shown`), looked up like the description."""
    for base in cls.__mro__:
        fields = getattr(base, "model_fields", None)
        if isinstance(fields, dict) and name in fields:
            extra = fields[name].json_schema_extra
            if isinstance(extra, dict) and key in extra:
                return str(extra[key])
    return None


def plain(text: str) -> str:
    """A description as a terminal shows it: without the Markdown backticks the reference pages render."""
    return text.replace("`", "")


def size_setting(value: object) -> object:
    """A size setting's text (``2GB``, ``500MB``, ``1.5GiB``) as bytes; its ValueError says what a size looks like."""
    if isinstance(value, str):
        from shared.disk import parse_size

        return parse_size(value)
    return value


class SharedSettings(BaseModel):
    """Settings both agents read. Agents subclass this and override the directory defaults."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    registry_username: str | None = Field(default=None, description="registry user (Docker Hub user name)")
    registry_password: SecretStr | None = Field(
        default=None, description="registry password or Docker Hub access token (secret)"
    )

    smtp_host: str | None = Field(default=None, description="SMTP server; unset = email off (said once at start-up)")
    smtp_port: int = Field(default=587, description="SMTP port")
    smtp_username: str | None = Field(default=None, description="SMTP login user (no login when unset)")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password (secret)")
    smtp_security: SmtpSecurity = Field(
        default="starttls",
        description="`starttls`, `ssl` (implicit TLS, usually port 465) or `none` (a login is then sent in clear: "
        "warned about at start-up unless `SMTP_HOST` is loopback)",
    )
    smtp_timeout: float = Field(default=10.0, description="seconds per SMTP connection")
    notify_from: str | None = Field(default=None, description="sender address")
    notify_to: tuple[str, ...] = Field(default=(), description="recipients, comma-separated")
    # Apprise URLs (Telegram, ntfy, ...); split by Apprise itself, since a URL may hold commas.
    notify_urls: SecretStr | None = Field(
        default=None,
        description="Apprise URLs for chat and push notifications (Telegram, ntfy, Gotify, Discord, Slack, Matrix, "
        "...), separated by commas or spaces (secret); needs `pip install 'pi-cicd[apprise]'`; every URL is checked "
        "at start-up (see \"Notifications on a phone\")",
    )

    log_dir: Path = Field(default=Path("logs"), description="folder of the per-run log files")
    state_dir: Path = Field(default=Path("state"), description="run history and state (SQLite)")
    log_retention_runs: int = Field(default=200, description="run logs kept per agent; older ones are deleted")
    log_level: str = Field(default="INFO", description="console log level")
    # DISK_MIN_FREE (shared/disk.py): a run or deploy does not start with less free where Docker keeps
    # its data; bytes, written as 2GB, 500MB, 1.5GiB; 0 turns the check off.
    disk_min_free: int = Field(
        default=2 * 10**9,
        description="a run or deploy does not start with less free space where Docker keeps its data (`2GB`, "
        "`500MB`, `1.5GiB`; `0` = no check); it fails at step `disk` (see \"Run on a Pi: SD cards\")",
        json_schema_extra=shown("`2GB`", value="size: bytes, or `2GB`, `500MB`, `1.5GiB`"),
    )

    @field_validator("notify_to", mode="before")
    @classmethod
    def _split_addresses(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object, info: ValidationInfo) -> object:
        # `SMTP_HOST=` in a compose file or .env means "not set", not "the host named ''": for every
        # optional setting (default None), a blank value is the same as no value.
        if isinstance(value, str) and not value.strip() and info.field_name is not None:
            if cls.model_fields[info.field_name].default is None:
                return None
        return value

    @field_validator("disk_min_free", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        return size_setting(value)

    @field_validator("smtp_port")
    @classmethod
    def _port_range(cls, value: int) -> int:
        if not 0 < value < 65536:
            raise ValueError("must be a TCP port between 1 and 65535")
        return value

    @field_validator("log_retention_runs")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @property
    def email_enabled(self) -> bool:
        return self.smtp_host is not None

    @property
    def smtp_login_in_clear(self) -> bool:
        """True when the SMTP login (password included) would cross a network unencrypted.

        That is ``SMTP_SECURITY=none`` with ``SMTP_USERNAME`` set and a host that is not this machine:
        a relay on loopback (a local Postfix or msmtp) is the usual reason for ``none``, and
        loopback traffic never leaves the machine.
        """
        return (
            self.smtp_host is not None
            and self.smtp_security == "none"
            and bool(self.smtp_username)
            and not is_loopback_host(self.smtp_host)
        )

    def secret_values(self) -> list[str]:
        """Every configured secret in clear, for redaction. Never log what this returns."""
        values = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                values.append(value.get_secret_value())
        if self.notify_urls is not None:
            # The whole value rarely appears in a message; a token from one of its URLs might.
            for url in re.split(r"[\s,;]+", self.notify_urls.get_secret_value()):
                values.extend(url_secret_parts(url))
        return values


def is_loopback_host(host: str) -> bool:
    """``localhost`` (and ``*.localhost``, RFC 6761), or a loopback IPv4/IPv6 address; no DNS lookup."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


SettingsT = TypeVar("SettingsT", bound=SharedSettings)
ModelT = TypeVar("ModelT", bound=BaseModel)


def read_environment(env_file: Path | None = Path(".env"), environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment over the ``.env`` file: a variable set in both wins from the environment."""
    merged: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    return merged


def load_settings(cls: type[SettingsT], environ: Mapping[str, str]) -> SettingsT:
    """Build ``cls`` from ``environ`` (variable names in upper case), or raise ``SettingsError``.

    The error lists every bad variable with the reason; the value is echoed only when it is not a
    secret.
    """
    values = {name: environ[name.upper()] for name in cls.model_fields if name.upper() in environ}
    return validate_settings(cls, values)


def validate_settings(
    cls: type[ModelT], values: Mapping[str, Any], *, name_of: Callable[[str], str] = str.upper
) -> ModelT:
    """Build ``cls`` from field values, or raise ``SettingsError`` naming each bad one by ``name_of(field)``.

    ``name_of`` is how the user wrote the setting: ``CD_IMAGE`` in the environment, ``[apps.web] image``
    in an apps file.
    """
    try:
        return cls.model_validate(dict(values))
    except ValidationError as exc:
        raise SettingsError(_describe(cls, exc, name_of)) from None


def _describe(cls: type[BaseModel], exc: ValidationError, name_of: Callable[[str], str]) -> str:
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        key = name_of(field)
        message = error["msg"].removeprefix("Value error, ")
        # pydantic's own messages ("Input should be a valid integer") do not say what the setting is; the
        # project's validators do. The setting's description, the reference's words, says it for the former.
        description = field_description(cls, field) if field in cls.model_fields else None
        expected = f" (expected: {plain(description)})" if description and error["type"] != "value_error" else ""
        if error["type"] == "missing":
            lines.append(f"{key} is required but not set" + (f" ({plain(description)})" if description else ""))
            continue
        annotation = str(cls.model_fields[field].annotation) if field in cls.model_fields else ""
        if "SecretStr" in annotation:
            lines.append(f"{key}: {message}{expected}")
        else:
            lines.append(f"{key}={error['input']!r}: {message}{expected}")
    return "invalid settings: " + "; ".join(lines)
