"""Text tables for the terminal, drawn by rich, so the leaderboard, the sweep's status table, prepare's class
counts and the Kubernetes submitter's table all look alike.

`render` gives plain text (no colour, no box lines, never wrapped): the same on a terminal, in a log file and in
a test. `Screen` keeps one table redrawn in place on a terminal (rich's Live) while messages scroll above it;
when the output is not a terminal it only prints the messages, and the caller prints a line per change instead
of filling a log with redraws.
"""

from __future__ import annotations

import io
from typing import Iterable, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

NEVER_WRAP = 10_000  # console width for plain rendering: a row is one line however long


def table(rows: list[dict], right: Iterable[str] = (), max_width: dict[str, int] | None = None) -> Table:
    """A rich Table of dict rows (keys are the headings): columns two spaces apart, `right` ones right-aligned,
    a column in `max_width` cut with an ellipsis. Cells are plain text, never markup."""
    right, max_width = set(right), max_width or {}
    out = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1))
    for heading in (rows[0] if rows else {}):
        out.add_column(heading, justify="right" if heading in right else "left", no_wrap=True,
                       overflow="ellipsis", max_width=max_width.get(heading))
    for row in rows:
        out.add_row(*(Text(str(value)) for value in row.values()))
    return out


def render(rows: list[dict], right: Iterable[str] = (), max_width: dict[str, int] | None = None) -> str:
    """The table as plain aligned text lines (empty when there are no rows)."""
    if not rows:
        return ""
    console = Console(file=io.StringIO(), width=NEVER_WRAP, color_system=None, highlight=False, emoji=False)
    console.print(table(rows, right, max_width))
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())


class Screen:
    """Messages, and on a terminal a table below them that `draw` replaces in place (rich Live).

    Use as a context manager around the time the table is live; outside it `say` just prints."""

    def __init__(self, out: TextIO):
        self.out = out
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.live: Live | None = None

    def __enter__(self) -> "Screen":
        if self.tty:
            console = Console(file=self.out, highlight=False, emoji=False)
            self.live = Live(console=console, auto_refresh=False, transient=True, redirect_stdout=False,
                             redirect_stderr=False)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def say(self, text: str) -> None:
        """A message line, printed above the live table when there is one."""
        if self.live is not None:
            self.live.console.print(Text(text))
        else:
            print(text, file=self.out, flush=True)

    def draw(self, rows: list[dict], right: Iterable[str] = ()) -> None:
        """Replace the live table (terminal only; elsewhere nothing happens)."""
        if self.live is not None:
            self.live.update(table(rows, right), refresh=True)
