"""The apps / repos file reader: shape, names, unknown keys, secrets in readable files, error naming."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from shared.errors import SettingsError
from shared.settings import validate_settings
from shared.targets_file import TargetTable, check_name, field_namer, read_targets_file, table_values

KEYS = ("image", "ports", "poll_interval", "init", "registry_password")
SECRETS = ("registry_password",)


def _write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "apps.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def _read(path: Path) -> list[TargetTable]:
    return read_targets_file(path, setting="CD_APPS_FILE", section="apps", keys=KEYS, secret_keys=SECRETS)


def test_tables_come_in_file_order_with_their_values(tmp_path):
    path = _write(tmp_path, '[apps.web]\nimage = "me/web"\nports = ["8080:80", "8443:443"]\n\n'
                            '[apps.bot]\nimage = "me/bot"\npoll_interval = 30\ninit = true\n')
    tables = _read(path)
    assert [t.name for t in tables] == ["web", "bot"]
    assert table_values("cd_", tables[0]) == {"cd_image": "me/web", "cd_ports": "8080:80,8443:443"}
    assert table_values("cd_", tables[1]) == {"cd_image": "me/bot", "cd_poll_interval": 30, "cd_init": "true"}


def test_unprefixed_keys_keep_their_field_name(tmp_path):
    path = _write(tmp_path, '[apps.web]\nimage = "me/web"\nregistry_password = "s3cret"\n')
    values = table_values("cd_", _read(path)[0], unprefixed=("registry_password",))
    assert values == {"cd_image": "me/web", "registry_password": "s3cret"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[apps.web]\nimgae = "x"\n', "[apps.web] unknown key(s) 'imgae'"),
        ('[apps.Web]\nimage = "x"\n', "[apps.Web] name 'Web' is not valid"),
        ('[apps."-x"]\nimage = "x"\n', "name '-x' is not valid"),
        (f'[apps.{"a" * 64}]\nimage = "x"\n', "is not valid"),
        ('[apps]\n', "defines no [apps.NAME] table"),
        ('', "defines no [apps.NAME] table"),
        ('[app.web]\nimage = "x"\n', "unknown top-level key(s) app"),
        ('apps = 3\n', "defines no [apps.NAME] table"),
        ('[apps]\nweb = "x"\n', "[apps.web] must be a table of settings"),
        ('[apps.web]\nimage = { name = "x" }\n', "[apps.web] image: must be a string"),
        ('[apps.web]\nports = [[1]]\n', "[apps.web] ports: must be a string"),
        ('[apps.web\n', "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_with_a_message_naming_table_and_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        _read(path)
    assert message in str(caught.value)
    assert f"CD_APPS_FILE='{path}'" in str(caught.value)


def test_a_missing_file_and_a_folder_are_named(tmp_path):
    with pytest.raises(SettingsError, match="no such file"):
        _read(tmp_path / "missing.toml")
    with pytest.raises(SettingsError, match="is a folder"):
        _read(tmp_path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_secret_in_a_file_others_can_read_is_refused_like_ssh_refuses_a_key(tmp_path, mode):
    path = _write(tmp_path, '[apps.web]\nimage = "x"\nregistry_password = "hunter2"\n', mode)
    with pytest.raises(SettingsError) as caught:
        _read(path)
    text = str(caught.value)
    assert "[apps.web] registry_password" in text and f"chmod 600 {path}" in text
    assert "hunter2" not in text


def test_a_readable_file_without_secrets_is_fine(tmp_path):
    assert [t.name for t in _read(_write(tmp_path, '[apps.web]\nimage = "x"\n', 0o644))] == ["web"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_secret_in_a_file_of_another_user_is_refused(tmp_path):
    path = _write(tmp_path, '[apps.web]\nimage = "x"\nregistry_password = "hunter2"\n')
    os.chown(path, 65534, 65534)
    with pytest.raises(SettingsError, match="belongs to another user"):
        _read(path)


@pytest.mark.parametrize("name", ["web", "0", "my-app.v2_x", "a" * 63])
def test_good_names(name):
    assert check_name(name, "app") == name


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)
    cd_image: str
    cd_poll_interval: int = 60
    registry_password: SecretStr | None = None
    log_dir: str = "logs"


def test_validation_errors_name_the_table_and_key_and_never_echo_a_secret():
    namer = field_namer("apps", "web", "cd_", KEYS)
    with pytest.raises(SettingsError) as caught:
        validate_settings(_Model, {"cd_poll_interval": "soon", "log_dir": 3}, name_of=namer)
    text = str(caught.value)
    assert "[apps.web] image is required but not set" in text
    assert "[apps.web] poll_interval='soon'" in text
    assert "LOG_DIR=3" in text
    with pytest.raises(SettingsError) as caught:
        validate_settings(_Model, {"cd_image": "x", "registry_password": 5}, name_of=namer)
    assert "[apps.web] registry_password:" in str(caught.value) and "5" not in str(caught.value).split(":", 1)[1]
