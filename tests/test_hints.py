"""Every ``--option`` that a message, hint or docstring of the package names is a real CLI option.

A hint such as "pass --no-centre" that names an option the ``facecluster`` command does
not have sends the user to a usage error; this test reads the option names out of the
source text and checks each one against the options typer actually builds.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import typer.main

import cli.main

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("facecluster", "cli")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# Calls whose string arguments are another program's command line, not our CLI's options.
FOREIGN_COMMAND_LINES = {"Infomap"}


def cli_options() -> set[str]:
    """Every option name (long and short) of every subcommand of the ``facecluster`` app."""
    group = typer.main.get_command(cli.main.app)
    names = {opt for param in group.params for opt in (*param.opts, *param.secondary_opts)}
    for command in group.commands.values():
        for param in command.params:
            names.update(param.opts)
            names.update(param.secondary_opts)
    names.add("--help")
    return names


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def mentioned_options(source: str, filename: str = "<source>") -> list[tuple[str, int, str]]:
    """``(filename, line, option)`` for every ``--option`` in a string literal of ``source``
    (plain strings, f-string parts and docstrings alike), except the arguments of calls
    that build another program's command line."""
    tree = ast.parse(source, filename)
    foreign: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _call_name(node) in FOREIGN_COMMAND_LINES:
            for arg in (*node.args, *(kw.value for kw in node.keywords)):
                foreign.update(id(sub) for sub in ast.walk(arg))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in foreign:
            found.extend((filename, node.lineno, opt) for opt in OPTION.findall(node.value))
    return found


def package_mentions() -> list[tuple[str, int, str]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            found.extend(mentioned_options(path.read_text(encoding="utf-8"), rel))
    return found


def test_cli_options_are_read_from_the_typer_app():
    options = cli_options()
    assert {"--centre", "--path-col", "--label-col", "--embeddings", "--out", "--quiet", "-q"} <= options
    assert "--no-centre" not in options


def test_the_scan_finds_the_package_hints():
    mentioned = {opt for _, _, opt in package_mentions()}
    # the hints faceset.py gives for a missing column, a missing embeddings file, identical vectors
    assert {"--path-col", "--label-col", "--embeddings", "--centre"} <= mentioned


def test_every_option_named_in_the_package_exists():
    options = cli_options()
    unknown = [f"{file}:{line}: {opt}" for file, line, opt in package_mentions() if opt not in options]
    assert not unknown, "messages name options the CLI does not have:\n" + "\n".join(unknown)


def test_a_made_up_option_in_a_message_is_caught():
    source = (
        "def f(path, flag):\n"
        "    raise InputError(path, f'cannot centre (pass centre=False / --no-centre, not {flag})')\n"
        "hint = 'choose another --out'\n"
        "im = Infomap('--two-level --silent')\n"
    )
    options = cli_options()
    mentioned = [opt for _, _, opt in mentioned_options(source)]
    assert sorted(mentioned) == ["--no-centre", "--out"]
    assert [opt for opt in mentioned if opt not in options] == ["--no-centre"]
