"""The reference pages under docs/reference/ are what the code generates (shared/reference.py), and every
setting has the description they, ``--help`` and the settings errors show."""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from cd_agent.cli import build_parser as cd_parser
from cd_agent.settings import CdSettings
from ci_agent.cli import build_parser as ci_parser
from ci_agent.settings import CiSettings
from shared import reference
from shared.errors import SettingsError
from shared.settings import SharedSettings, load_settings, shown

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(reference.pages()))
def test_the_committed_page_is_what_the_code_generates(name):
    path = ROOT / reference.DOCS / name
    generated = reference.pages()[name]()
    committed = path.read_text(encoding="utf-8") if path.is_file() else ""
    if committed != generated:
        diff = "".join(difflib.unified_diff(
            committed.splitlines(keepends=True), generated.splitlines(keepends=True),
            fromfile=f"{reference.DOCS / name} (committed)", tofile="generated", n=1,
        ))
        pytest.fail(
            f"{reference.DOCS / name} differs from what the code generates: run `{reference.COMMAND}` and commit "
            f"the page.\n{diff[:4000]}",
            pytrace=False,
        )


@pytest.mark.parametrize("model", [CiSettings, CdSettings])
def test_every_setting_has_a_description(model):
    missing = reference.undocumented(model)
    assert not missing, (
        f"settings without a description: {', '.join(missing)}. Give each field Field(description=...): the one "
        f"line the reference pages (`{reference.COMMAND}`), --help and its settings errors show"
    )


class _Undocumented(SharedSettings):
    ci_disk_budget: int = 0


def test_a_field_without_a_description_is_named_and_stops_the_generator():
    assert reference.undocumented(_Undocumented) == ["_Undocumented.ci_disk_budget"]
    with pytest.raises(ValueError, match=r"CI_DISK_BUDGET \(_Undocumented.ci_disk_budget\) has no description"):
        reference.setting(_Undocumented, "ci_disk_budget")


def test_every_key_of_an_apps_or_repos_file_is_a_row_of_its_page():
    from cd_agent.apps import APP_KEYS
    from ci_agent.targets import REPO_KEYS

    ci_page, cd_page = reference.ci_settings_page(), reference.cd_settings_page()
    assert [key for key in REPO_KEYS if f"| `{key}` |" not in ci_page] == []
    assert [key for key in APP_KEYS if f"| `{key}` |" not in cd_page] == []
    # Each variable is on its page exactly once.
    for model, page in ((CiSettings, ci_page), (CdSettings, cd_page)):
        assert [name for name in model.model_fields if page.count(f"\n| `{name.upper()}` |") != 1] == []


def test_a_redefined_default_keeps_the_shared_description_and_shows_the_agent_default():
    ci = reference.setting(CiSettings, "log_dir")
    assert (ci.default, ci.description) == ("`logs/ci`", "folder of the per-run log files")
    assert reference.setting(CdSettings, "log_dir").default == "`logs/cd`"


class _Shapes(BaseModel):
    required: str = Field(description="d")
    unset: str | None = Field(default=None, description="d")
    empty: str = Field(default="", description="d")
    seconds: float = Field(default=1800.0, description="d")
    flag: bool = Field(default=False, description="d")
    spelled: int = Field(default=2 * 10**9, description="d", json_schema_extra=shown("`2GB`", value="size"))


@pytest.mark.parametrize(("name", "default", "value"), [
    ("required", "required", "text"),
    ("unset", "unset", "text"),
    ("empty", "unset", "text"),
    ("seconds", "`1800`", "number"),
    ("flag", "`false`", "`true` or `false`"),
    ("spelled", "`2GB`", "size"),
])
def test_defaults_and_values_read_as_a_user_writes_them(name, default, value):
    assert (reference.default_text(_Shapes, name), reference.value_text(_Shapes, name)) == (default, value)


def test_choices_and_secrets_come_from_the_type():
    assert reference.value_text(CiSettings, "ci_tag_style") == "`auto`, `plain` or `v`"
    assert reference.value_text(CiSettings, "ci_webhook_secret") == "secret text"


def test_a_settings_error_says_what_the_setting_is_with_its_description():
    with pytest.raises(SettingsError) as caught:
        load_settings(CiSettings, {"CI_PORT": "eighty", "CI_ALLOW_UNSIGNED": "true", "CI_REPO_URL": "/r"})
    text = str(caught.value)
    assert "CI_PORT='eighty': Input should be a valid integer" in text
    assert "(expected: listen port of the webhook listener)" in text
    # A missing setting: the reference's words, without the Markdown backticks a terminal would show.
    assert "CI_IMAGE is required but not set (the image to push, e.g. docker.io/owner/app or " in text


def test_a_validator_that_says_what_it_expects_is_not_repeated():
    with pytest.raises(SettingsError) as caught:
        load_settings(CiSettings, {"CI_PORT": "70000", "CI_ALLOW_UNSIGNED": "true", "CI_REPO_URL": "/r",
                                   "CI_IMAGE": "example.org/a/b"})
    assert str(caught.value) == "invalid settings: CI_PORT='70000': must be a TCP port between 1 and 65535"


@pytest.mark.parametrize(("parser", "model"), [(ci_parser, CiSettings), (cd_parser, CdSettings)])
def test_help_lists_every_setting_with_its_description(parser, model, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = parser().format_help()
    for name in model.model_fields:
        assert f"  {name.upper()} (default: " in text
    assert "folder of the per-run log files" in text


def test_the_cli_page_has_every_subcommand_and_option():
    page = reference.cli_page()
    for build in (ci_parser, cd_parser):
        parser = build()
        for name, sub in reference._subcommands(parser).items():
            assert f"### `{parser.prog} {name}`" in page
            for action in sub._actions:
                if not isinstance(action, argparse._HelpAction):
                    assert str(action.option_strings[0] if action.option_strings else action.metavar) in page


def test_check_says_which_page_differs_and_how_to_regenerate(tmp_path, capsys):
    assert reference.main(["--root", str(tmp_path)]) == 0
    assert reference.main(["--root", str(tmp_path), "--check"]) == 0
    page = tmp_path / reference.DOCS / reference.CLI_PAGE
    page.write_text(page.read_text() + "a hand edit\n")
    assert reference.main(["--root", str(tmp_path), "--check"]) == 1
    assert f"docs/reference/cli.md differs from what the code generates: run {reference.COMMAND}" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("name", sorted(reference.pages()))
def test_every_table_row_has_as_many_cells_as_its_header(name):
    header_cells = 0
    for line in reference.pages()[name]().splitlines():
        if not line.startswith("|"):
            header_cells = 0
            continue
        cells = len(line.replace("\\|", "").split("|")) - 2
        if header_cells == 0:
            header_cells = cells
        assert cells == header_cells, f"{name}: {line}"
