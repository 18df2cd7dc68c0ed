"""The reference pages (``docs/reference/``), generated from the code so that they cannot drift from it.

::

    python -m shared.reference          write the pages
    python -m shared.reference --check  exit 1 (and say which) when a committed page differs

The settings pages are the settings models' fields: the variable (the field's name upper-cased), the
key of an apps or repos file table (the agents' own maps, ``cd_agent.apps.FIELD_KEYS`` and
``ci_agent.targets.FIELD_KEYS``), the default, the values taken (from the type) and the one-line
description the field carries, the same text ``--help`` lists and a settings error quotes. The CLI page
is the ``argparse`` parsers of both agents and the exit codes their error classes declare.
``tests/unit/test_reference_pages.py`` regenerates the pages in memory and fails when the committed ones
differ, or when a setting has no description.

This is the one module of ``shared`` that reads both agents, inside the page functions only: the reference
covers the two of them. What an agent itself uses of it is :func:`settings_help` and :class:`HelpFormatter`.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, SecretStr

from shared.settings import SHOWN_DEFAULT, SHOWN_VALUE, field_description, field_extra, plain

COMMAND = "python -m shared.reference"
DOCS = Path("docs/reference")
CI_PAGE = "settings-ci.md"
CD_PAGE = "settings-cd.md"
CLI_PAGE = "cli.md"


@dataclass(frozen=True)
class Setting:
    """One row of a settings table: what a user writes, and what it means."""

    variable: str
    key: str | None  # its key in an apps or repos file table; None: the environment only
    default: str
    value: str
    description: str


def undocumented(cls: type[BaseModel]) -> list[str]:
    """The fields of ``cls`` without a description: each would be a setting nobody can look up."""
    return [f"{cls.__name__}.{name}" for name in cls.model_fields if not field_description(cls, name)]


def setting(cls: type[BaseModel], name: str, key: str | None = None, *, value: str | None = None) -> Setting:
    """The row of field ``name``; ``value`` says what it takes where its type cannot (``CD_STRATEGY``)."""
    description = field_description(cls, name)
    if not description:
        raise ValueError(
            f"setting {name.upper()} ({cls.__name__}.{name}) has no description: give the field "
            "Field(description=...), the one line the reference, --help and its errors show"
        )
    return Setting(name.upper(), key, default_text(cls, name), value or value_text(cls, name), description)


def default_text(cls: type[BaseModel], name: str) -> str:
    """How a field's default reads: ``required``, ``unset`` or the value in backticks (``shown()`` wins)."""
    shown = field_extra(cls, name, SHOWN_DEFAULT)
    if shown is not None:
        return shown
    field = cls.model_fields[name]
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if default is None or default in ("", ()):
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{default}`"


def value_text(cls: type[BaseModel], name: str) -> str:
    """What a field takes, from its type: ``integer``, ``` `a`, `b` or `c` ```, ``secret`` (``shown()`` wins)."""
    shown = field_extra(cls, name, SHOWN_VALUE)
    if shown is not None:
        return shown
    annotation = cls.model_fields[name].annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return _one_of([f"`{choice}`" for choice in typing.get_args(annotation)])
    names: dict[object, str] = {
        SecretStr: "secret text", bool: "`true` or `false`", int: "integer", float: "number", Path: "path",
        str: "text",
    }
    if typing.get_origin(annotation) is tuple:
        return "comma-separated list"
    return names.get(annotation, str(annotation))


def _one_of(items: Sequence[str], conjunction: str = "or") -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_table(settings: Iterable[Setting], *, key_header: str | None = None) -> str:
    """A Markdown table of ``settings``; with ``key_header``, a column of their file keys."""
    head = ["variable", *([key_header] if key_header else []), "default", "value", "meaning"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for item in settings:
        cells = [f"`{item.variable}`"]
        if key_header:
            cells.append(f"`{item.key}`" if item.key else "")
        cells += [item.default, item.value, item.description]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def settings_help(
    cls: type[BaseModel], keys: Mapping[str, str] | None = None, *, file: str = "", width: int = 79
) -> str:
    """The settings of ``cls`` as ``--help`` lists them (an argparse epilog, see :class:`HelpFormatter`).

    ``keys`` maps a field to its key in the agent's ``file`` (``"repos file"``), for the per-target ones.
    """
    keys = keys or {}
    lines = ["settings (environment variables, over --env-file; the reference pages are docs/reference/):"]
    for name in cls.model_fields:
        item = setting(cls, name)
        key = f"; {file} key: {keys[name]}" if name in keys else ""
        lines.append(f"  {item.variable} (default: {plain(item.default)}{key})")
        lines += textwrap.wrap(plain(item.description), width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own, except that a text with line breaks (the :func:`settings_help` epilog) keeps its layout."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def header(title: str, sources: Iterable[str]) -> str:
    """The top of a generated page: what it is, from what, and the command that writes it."""
    return (
        f"# {title}\n\n"
        f"> Generated by `{COMMAND}` from {', '.join(f'`{source}`' for source in sources)}: do not edit it by "
        f"hand. Change the code and run `{COMMAND}`; `tests/unit/test_reference_pages.py` fails while this page "
        "differs from what the code generates.\n\n"
    )


@dataclass(frozen=True)
class TargetsFile:
    """How an agent's apps or repos file maps onto its settings (``cd_agent/apps.py``, ``ci_agent/targets.py``)."""

    program: str  # ci-agent
    target: str  # repository
    setting: str  # CI_REPOS_FILE
    section: str  # repos
    prefix: str  # CI_
    unprefixed: Sequence[str]  # shared settings a table may set under their own name
    secret_keys: Sequence[str]
    one_target: str  # what the variables describe without the file


def settings_page(
    title: str, sources: Iterable[str], per_target: list[Setting], agent_wide: list[Setting], file: TargetsFile
) -> str:
    """A settings page: the per-target settings with their file keys, the agent-wide ones, the file's rules."""
    from shared.targets_file import NAME_PATTERN

    return (
        header(title, sources)
        + f"`{file.program}` reads its settings once, at start-up: the environment over the file `--env-file` "
        "names (`.env` by default). A setting's variable is its name in upper case. A bad or missing value stops "
        "the agent with one message naming every bad variable and what it expects; a secret is never echoed.\n\n"
        f"## Per {file.target}\n\n"
        f"Without `{file.setting}` these variables describe {file.one_target}. With it, each is the key of the "
        f"second column in every `[{file.section}.NAME]` table, and the `{file.prefix}*` ones must not be set in "
        f"the environment ({_names(file.unprefixed, 'and')} fall back to the environment's).\n\n"
        + settings_table(per_target, key_header=f"{file.section[:-1]}s-file key")
        + f"\n## Agent-wide\n\nThe environment (or `.env`) only; one value for every {file.target}.\n\n"
        + settings_table(agent_wide)
        + f"\n## The {file.section} file (`{file.setting}`)\n\n"
        f"`{file.setting}` names a TOML file with one `[{file.section}.NAME]` table per {file.target}. The rule "
        f"is mechanical: a per-{file.target} variable `{file.prefix}X` is the key `x` (`{file.prefix}IMAGE` is "
        "`image`), a shared one keeps its name in lower case (`REGISTRY_PASSWORD` is `registry_password`); the "
        "key has the same meaning, default and validation as the variable. A list may be a TOML list or the "
        "environment's comma-separated text. An error names the table and the key "
        f"(`[{file.section}.web] image is required but not set`).\n\n"
        f"- `NAME` matches `{NAME_PATTERN.pattern}`: it names the {file.target}'s state and log folders and its "
        "emails.\n"
        "- An unknown key, a top-level key other than the tables, or a value that is not a string, number, "
        "boolean or list is refused at start-up; nothing is ignored silently.\n"
        f"- A file holding a secret ({_names(file.secret_keys, 'or')}) must be readable by its owner only "
        "(`chmod 600`) and belong to the agent's user (or root), the way ssh treats a private key.\n"
        "- The agent reads the file again on SIGHUP (`systemctl reload`).\n"
    )


def _names(keys: Iterable[str], conjunction: str) -> str:
    return _one_of([f"`{key}`" for key in keys], conjunction)


def ci_settings_page() -> str:
    from ci_agent.settings import CiSettings
    from ci_agent.targets import FIELD_KEYS, SECRET_KEYS, SECTION, SETTING, UNPREFIXED

    fields = CiSettings.model_fields
    return settings_page(
        "CI agent settings",
        ["ci_agent/settings.py", "shared/settings.py", "ci_agent/targets.py"],
        [setting(CiSettings, name, FIELD_KEYS[name]) for name in fields if name in FIELD_KEYS],
        [setting(CiSettings, name) for name in fields if name not in FIELD_KEYS],
        TargetsFile(
            "ci-agent", "repository", SETTING, SECTION, "CI_", sorted(UNPREFIXED), SECRET_KEYS,
            "the agent's one repository",
        ),
    )


def cd_settings_page() -> str:
    from cd_agent.apps import APPS_FILE, FIELD_KEYS, SECRET_KEYS, SECTION, UNPREFIXED_KEYS
    from cd_agent.settings import CdAgentSettings, CdSettings
    from cd_agent.strategies import STRATEGIES

    # CD_STRATEGY is checked against the table of strategies, not a type: its values are that table's rows.
    values = {"cd_strategy": _one_of([f"`{name}`" for name in STRATEGIES])}
    return settings_page(
        "CD agent settings",
        ["cd_agent/settings.py", "shared/settings.py", "cd_agent/apps.py"],
        [
            setting(CdSettings, name, FIELD_KEYS[name], value=values.get(name))
            for name in CdSettings.model_fields if name in FIELD_KEYS
        ],
        [setting(CdAgentSettings, name) for name in CdAgentSettings.model_fields if name not in FIELD_KEYS],
        TargetsFile(
            "cd-agent", "app", APPS_FILE, SECTION, "CD_", UNPREFIXED_KEYS, SECRET_KEYS,
            "the agent's one app, named after `CD_CONTAINER_NAME` (with the file: `NAME`)",
        ),
    )


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _usage_part(action: argparse.Action) -> str:
    if isinstance(action, argparse._SubParsersAction):
        return str(action.metavar or "COMMAND")
    if not action.option_strings:
        name = str(action.metavar or action.dest)
        return f"[{name}]" if action.nargs == "?" else name
    option = action.option_strings[-1] if len(action.option_strings) > 1 else action.option_strings[0]
    text = option if action.nargs == 0 else f"{option} {action.metavar or action.dest.upper()}"
    return text if action.required else f"[{text}]"


def _own_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions if not isinstance(action, argparse._HelpAction)]


def _markdown(text: str) -> str:
    """Parser text (plain) as Markdown that shows it as written: no emphasis from ``CI_*``, no HTML from ``<x>``."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("<", "&lt;").replace("|", "\\|")


def _help_of(action: argparse.Action) -> str:
    text = str(action.help or "")
    return _markdown(text % {"default": action.default, "prog": ""} if "%(" in text else text)


def _arguments_table(parser: argparse.ArgumentParser) -> str:
    rows = []
    for action in _own_actions(parser):
        if isinstance(action, argparse._SubParsersAction):
            continue
        name = ", ".join(action.option_strings) if action.option_strings else str(action.metavar or action.dest)
        if action.option_strings and action.nargs != 0:
            name += f" {action.metavar or action.dest.upper()}"
        rows.append(f"| `{name}` | {_help_of(action)} |")
    if not rows:
        return ""
    return "| argument | meaning |\n|---|---|\n" + "\n".join(rows) + "\n\n"


def cli_section(parser: argparse.ArgumentParser) -> str:
    """One program: its usage, options and every subcommand with its own, as argparse defines them."""
    prog = parser.prog
    text = f"## `{prog}`\n\n{_markdown(parser.description or '')}\n\n"
    text += f"```\n{prog} {' '.join(_usage_part(action) for action in _own_actions(parser))}\n```\n\n"
    text += _arguments_table(parser)
    helps = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: str(choice.help or "") for choice in action._choices_actions}
    for name, sub in _subcommands(parser).items():
        text += f"### `{prog} {name}`\n\n"
        if helps.get(name):
            text += _markdown(f"{helps[name][0].upper()}{helps[name][1:]}.") + "\n\n"
        if sub.description:
            text += f"{_markdown(sub.description)}\n\n"
        usage = " ".join(_usage_part(action) for action in _own_actions(sub))
        text += f"```\n{prog} {name}{' ' + usage if usage else ''}\n```\n\n"
        text += _arguments_table(sub)
    return text


def exit_codes(package: str) -> list[tuple[int, str]]:
    """The exit codes of ``package``'s command line: each error class that declares an ``exit_code``, with the
    first sentence of its docstring (``shared.errors``'s base class is every other failure)."""
    from shared.errors import PiCicdError

    def every(cls: type[PiCicdError]) -> Iterable[type[PiCicdError]]:
        yield cls
        for sub in cls.__subclasses__():
            yield from every(sub)

    rows = [(0, "done")]
    for cls in every(PiCicdError):
        if "exit_code" not in vars(cls) or not cls.__module__.startswith(("shared.", f"{package}.")):
            continue
        if cls is PiCicdError:
            meaning = "failed: any error without a code of its own (the message on stderr says what)"
        else:
            meaning = " ".join((cls.__doc__ or cls.__name__).split()).split(". ")[0].rstrip(".")
            meaning = meaning[0].lower() + meaning[1:]
        if cls.exit_code == 2:
            meaning += "; also a command line argparse refuses"
        rows.append((cls.exit_code, f"{meaning} (`{cls.__name__}`)"))
    rows.append((130, "interrupted (Ctrl-C)"))
    return sorted(rows)


def _exit_codes_table(package: str) -> str:
    lines = ["| exit code | meaning |", "|---|---|"]
    lines += [f"| `{code}` | {_cell(meaning)} |" for code, meaning in exit_codes(package)]
    return "\n".join(lines) + "\n"


def cli_page() -> str:
    from cd_agent.cli import build_parser as cd_parser
    from ci_agent.cli import build_parser as ci_parser

    return (
        header("Command line", ["ci_agent/cli.py", "cd_agent/cli.py", "shared/errors.py", "cd_agent/errors.py"])
        + "Both programs read their settings from the environment over `--env-file` (see the settings pages: "
        f"[CI agent]({CI_PAGE}), [CD agent]({CD_PAGE})); `--help` lists them too. An error is one line on "
        "stderr, and the exit code says what happened.\n\n"
        + cli_section(ci_parser())
        + "### Exit codes of `ci-agent`\n\n" + _exit_codes_table("ci_agent") + "\n"
        + cli_section(cd_parser())
        + "### Exit codes of `cd-agent`\n\n" + _exit_codes_table("cd_agent")
    )


def pages() -> dict[str, Callable[[], str]]:
    """Every generated page under :data:`DOCS`, by file name."""
    return {CI_PAGE: ci_settings_page, CD_PAGE: cd_settings_page, CLI_PAGE: cli_page}


def stale_pages(root: Path) -> list[str]:
    """The pages under ``root/docs/reference`` that differ from what the code generates (or are missing)."""
    stale = []
    for name, make in pages().items():
        path = root / DOCS / name
        if not path.is_file() or path.read_text(encoding="utf-8") != make():
            stale.append(str(DOCS / name))
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Write the reference pages from the code.")
    parser.add_argument("--check", action="store_true", help="only say which pages differ; exit 1 if any does")
    parser.add_argument("--root", type=Path, default=Path("."), help="the checkout (default: .)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages(args.root)
        for name in stale:
            print(f"{name} differs from what the code generates: run {COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    (args.root / DOCS).mkdir(parents=True, exist_ok=True)
    for name, make in pages().items():
        (args.root / DOCS / name).write_text(make(), encoding="utf-8")
        print(f"wrote {DOCS / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
