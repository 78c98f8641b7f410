"""Every `--option` a message names exists: the hints in common/ and jobs/ against the CLI's real options.

The strings are collected from the source (every string literal, f-strings' literal parts included, except
elements of list/tuple literals -- argv of docker or kubectl, not hints). A hint that says `aquarium <command>
... --option` must name an option of that very command; any other `--option` an option of some command.
"""

from __future__ import annotations

import ast
import re

import click
from helpers import ROOT

from jobs.cli import main

OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
COMMAND = re.compile(r"aquarium((?: [a-z][a-z-]*)+)")


def cli_options() -> dict[str, set[str]]:
    """'prepare', 'sweep run', ... -> every option spelling of that command, from click's command objects."""
    out: dict[str, set[str]] = {}

    def walk(cmd: click.Command, path: str, ctx: click.Context) -> None:
        out[path] = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), f"{path} {name}".strip(), click.Context(cmd, parent=ctx))

    walk(main, "", click.Context(main))
    return out


def hints() -> list[tuple[str, int, str, str]]:
    """(file, line, option, the text before it in its string) for every `--option` in a string of the code."""
    found = []
    for path in sorted([*ROOT.glob("common/**/*.py"), *ROOT.glob("jobs/*.py")]):
        tree = ast.parse(path.read_text())
        argv = {id(e) for node in ast.walk(tree) if isinstance(node, (ast.List, ast.Tuple)) for e in node.elts}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in argv:
                for m in OPTION.finditer(node.value):
                    found.append((path.relative_to(ROOT).as_posix(), node.lineno, "--" + m.group(1),
                                  node.value[:m.start()]))
    return found


def test_every_hinted_option_exists():
    options = cli_options()
    known = set().union(*options.values())
    found = hints()
    assert len(found) > 30 and any(o == "--max-entries" for _, _, o, _ in found)  # the scan really sees them
    wrong = []
    for file, line, option, before in found:
        named = COMMAND.findall(before)
        command = named[-1].strip() if named else None
        while command and command not in options:  # `aquarium prepare PATH ...`: the longest known prefix
            command = command.rsplit(" ", 1)[0] if " " in command else None
        allowed = options[command] if command else known
        if option not in allowed:
            wrong.append(f"{file}:{line}: {option} is not an option of `aquarium {command or '<any command>'}`")
    assert not wrong, "\n".join(wrong)


def test_scoped_hints_are_checked_against_their_command():
    options = cli_options()
    assert "--max-entries" in options["prepare"] and "--max-entries" not in options["sweep run"]
    assert "--kubernetes" in options["sweep status"] and "--executor" in options["sweep run"]


def test_the_zip_entry_hint_works(tmp_path, dataset_zip):
    """The zip-entry limit names `aquarium prepare --max-entries`, and that option really sets the limit."""
    from helpers import aquarium

    run = aquarium("prepare", "--source", dataset_zip, "--store", tmp_path / "store", "--max-entries", "5")
    assert run.returncode == 2 and "over the limit of 5" in run.stderr, run.stderr
    assert "rerun `aquarium prepare` with --max-entries N" in run.stderr
