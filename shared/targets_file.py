"""The apps file (CD) and the repos file (CI): many targets of one agent, one TOML table each.

::

    [apps.web]                      # CD_APPS_FILE; the CI agent's CI_REPOS_FILE has [repos.NAME]
    image = "docker.io/me/web"
    ports = ["8080:80"]             # a list, or the environment's comma string

The rule is mechanical so the docs need no second table: every per-target ``CD_X`` / ``CI_X``
setting is the key ``x`` of a table, with the same meaning, default and validation. This module only
reads and checks the file's shape (names, unknown keys, a secret in a file others can read); turning
a table into the agent's settings model is :func:`table_values` plus the agent's own model.

A secret (a registry password, a webhook secret) in a file other users can read is refused the way
ssh refuses a readable private key: the user learns it at start-up, not after the secret leaked.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import SettingsError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class TargetTable:
    """One ``[SECTION.NAME]`` table as written: ``values`` maps its keys to TOML values."""

    name: str
    values: Mapping[str, Any]

    def label(self, section: str) -> str:
        """``[apps.web]``: how error messages name the table."""
        return f"[{section}.{self.name}]"


def check_name(name: str, what: str) -> str:
    """``name`` if it can name state folders, log folders and emails; else ``SettingsError``."""
    if not NAME_PATTERN.match(name):
        raise SettingsError(
            f"{what} name {name!r} is not valid: use 1-63 characters of a-z, 0-9, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return name


def read_targets_file(
    path: Path,
    *,
    setting: str,
    section: str,
    keys: Collection[str],
    secret_keys: Collection[str] = (),
) -> list[TargetTable]:
    """The tables of ``path`` under ``[section.NAME]``, in file order, or ``SettingsError``.

    ``setting`` is the variable that named the file (``CD_APPS_FILE``), so every message says where
    to look. Unknown keys, bad names, values of no settings type and secrets in a file that group or
    others can read are errors; nothing is ignored silently.
    """
    where = f"{setting}={str(path)!r}"
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise SettingsError(f"{where}: is a folder, not a TOML file") from None
    except PermissionError:
        raise SettingsError(f"{where}: cannot be read by this user (uid {os.geteuid()})") from None
    except OSError as exc:
        raise SettingsError(f"{where}: cannot be read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{where}: not valid TOML: {exc}") from None

    unknown_top = sorted(set(document) - {section})
    if unknown_top:
        raise SettingsError(
            f"{where}: unknown top-level key(s) {', '.join(unknown_top)} (only [{section}.NAME] tables)"
        )
    tables = document.get(section, {})
    if not isinstance(tables, dict) or not tables:
        raise SettingsError(f"{where}: defines no [{section}.NAME] table")

    known = set(keys)
    result = []
    for name, values in tables.items():
        label = f"[{section}.{name}]"
        check_name(name, f"{where}: {label}")
        if not isinstance(values, dict):
            raise SettingsError(f"{where}: {label} must be a table of settings, not a {type(values).__name__}")
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(
                f"{where}: {label} unknown key(s) {', '.join(repr(k) for k in unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        for key, value in values.items():
            _check_value(f"{where}: {label} {key}", value)
        result.append(TargetTable(name, dict(values)))

    secrets = [f"{t.label(section)} {k}" for t in result for k in t.values if k in set(secret_keys)]
    if secrets:
        _refuse_if_readable_by_others(where, path, info, secrets)
    return result


def _check_value(what: str, value: object) -> None:
    if isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, list) and all(isinstance(item, (str, int)) and not isinstance(item, bool) for item in value):
        return
    raise SettingsError(f"{what}: must be a string, number, boolean or list of strings, not {type(value).__name__}")


def _refuse_if_readable_by_others(where: str, path: Path, info: os.stat_result, secrets: list[str]) -> None:
    mode = stat.S_IMODE(info.st_mode)
    holds = ", ".join(secrets)
    if mode & 0o077:
        raise SettingsError(
            f"{where}: holds secrets ({holds}) but other users can read or change it (mode {mode:04o}): "
            f"chmod 600 {path}"
        )
    if info.st_uid not in (os.geteuid(), 0):
        raise SettingsError(
            f"{where}: holds secrets ({holds}) but belongs to another user (uid {info.st_uid}): "
            f"chown it to the agent's user (uid {os.geteuid()})"
        )


def table_values(prefix: str, table: TargetTable, unprefixed: Collection[str] = ()) -> dict[str, Any]:
    """The table as settings field values: key ``ports`` is field ``cd_ports`` (``prefix="cd_"``).

    Keys in ``unprefixed`` are agent-wide fields a table may override as they are
    (``registry_username``). A list becomes the environment's comma-separated text and a boolean
    ``true``/``false``, so every value goes through exactly the validators the environment's text
    goes through.
    """
    return {
        (key if key in unprefixed else f"{prefix}{key}"): _as_text(value) for key, value in table.values.items()
    }


def _as_text(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return value


def field_namer(section: str, name: str, prefix: str, keys: Collection[str]) -> Callable[[str], str]:
    """How an error about field ``cd_image`` of app ``web`` names it: ``[apps.web] image``.

    Fields no table may set (agent-wide ones, from the environment) keep their variable name.
    """
    allowed = set(keys)

    def name_of(field: str) -> str:
        key = field.removeprefix(prefix)
        if key in allowed:
            return f"[{section}.{name}] {key}"
        return field.upper()

    return name_of
