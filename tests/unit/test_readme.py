"""The README's configuration reference lists every setting the agents read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cd_agent.settings import CdSettings
from ci_agent.settings import CiSettings
from shared.settings import SharedSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def documented() -> set[str]:
    reference = README.read_text().split("## Configuration reference", 1)[1]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", reference, flags=re.MULTILINE))


@pytest.mark.parametrize("settings", [CiSettings, CdSettings], ids=["ci", "cd"])
def test_every_setting_is_in_the_configuration_reference(settings: type[SharedSettings]) -> None:
    missing = {name.upper() for name in settings.model_fields} - documented()
    assert not missing, f"README.md's configuration reference lacks {sorted(missing)}"


def test_the_reference_lists_no_setting_that_does_not_exist() -> None:
    known = {name.upper() for settings in (CiSettings, CdSettings) for name in settings.model_fields}
    assert documented() - known == set()
