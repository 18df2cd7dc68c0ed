"""One LABEL line for the release labels, or None where the Dockerfile would read a value differently."""

from __future__ import annotations

import pytest

from ci_agent.label_line import label_line, with_labels


def test_every_label_in_one_quoted_line() -> None:
    assert label_line({"org.opencontainers.image.version": "1.2.3", "a/b": "x y"}) == (
        'LABEL "org.opencontainers.image.version"="1.2.3" "a/b"="x y"'
    )


def test_the_line_is_appended_after_the_last_instruction() -> None:
    assert with_labels("FROM scratch\nCMD x", {"k": "v"}) == 'FROM scratch\nCMD x\nLABEL "k"="v"\n'


@pytest.mark.parametrize("value", ["$HOME", '"quoted"', "back\\slash", "two\nlines", "tick`"])
def test_a_value_the_dockerfile_would_rewrite_is_left_to_the_api(value: str) -> None:
    assert label_line({"k": value}) is None


@pytest.mark.parametrize("key", ["", "has space", '"q"', "-lead"])
def test_an_unusual_key_is_left_to_the_api(key: str) -> None:
    assert label_line({key: "v"}) is None


def test_no_labels_is_no_line() -> None:
    assert label_line({}) is None


@pytest.mark.parametrize("head", ["# escape=`\n", "#escape=\\\n", "# syntax=x\n# ESCAPE = `\n"])
def test_a_dockerfile_with_an_escape_directive_is_left_to_the_api(head: str) -> None:
    assert with_labels(head + "FROM scratch\n", {"k": "v"}) is None


def test_an_escape_text_after_the_directives_is_only_a_comment() -> None:
    assert with_labels("FROM scratch\n# escape=`\n", {"k": "v"}) is not None


def test_a_dangling_line_continuation_is_left_to_the_api() -> None:
    assert with_labels("FROM scratch\nRUN true \\\n", {"k": "v"}) is None
    assert with_labels("FROM scratch\n\n\n", {"k": "v"}) == 'FROM scratch\nLABEL "k"="v"\n'
