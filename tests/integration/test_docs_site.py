"""The documentation site (mkdocs.yml, docs/) builds strictly, and the README's links into it resolve.

`.ci/run` builds the site the same way before the tests; this test makes the README's test command
(`scripts/test`) check it too. mkdocs comes with `.[dev]` (through the `docs` extra), so the test
never skips: a missing page or a broken link or anchor fails it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def mkdocs_build(config: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("mkdocs is not installed in this venv: pip install -e '.[dev]' (it pulls in the docs extra)")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
         "--site-dir", str(site_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        # Material's banner about its successor is not a warning of ours.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def copy_site_sources(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    return root


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    built = mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stderr[-4000:]}"
    # The generated reliability table is a page of the site.
    assert (tmp_path / "site" / "RELIABILITY" / "index.html").exists()


def test_the_strict_build_fails_on_a_broken_link_an_unknown_anchor_and_a_page_outside_the_nav(tmp_path: Path) -> None:
    """What "strict" promises, so that a change to mkdocs.yml (or a --quiet) cannot quietly drop it.

    One build with the three mistakes (each build takes seconds); mkdocs reports every warning it meets.
    """
    root = copy_site_sources(tmp_path)
    design = root / "docs" / "design.md"
    design.write_text(design.read_text() + "\n[broken](nope.md)\n\n[broken](security.md#no-such-heading)\n")
    (root / "docs" / "orphan.md").write_text("# A page nobody put in the nav\n")
    built = mkdocs_build(root / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0, "a broken link, anchor and page did not fail the strict build"
    for mistake in ("nope.md", "#no-such-heading", "orphan.md"):
        assert mistake in built.stderr, f"the strict build did not report {mistake}:\n{built.stderr[-4000:]}"


def test_the_readme_links_point_at_files_that_exist() -> None:
    readme = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [target for target in targets if "://" not in target]
    assert local, "the README links into the site no more"
    missing = [target for target in local if not (REPO / target).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
