"""`aquarium report`: the leaderboard in the terminal, read live from the variants' artefacts (writes nothing)."""

from __future__ import annotations

import click

from jobs import sweep_job


@sweep_job("report")
def command(sweep, target):
    """Print the leaderboard of the sweep; exit 2 when no variant has finished."""
    from common.report import CHOSEN_BY, choose_best, collect, ensemble_row, format_table, leaderboard

    results = collect(target, sweep)
    results += [row for row in [ensemble_row(target, sweep, results, write=False)] if row]
    click.echo(format_table(leaderboard(results)))
    best = choose_best(results)
    click.echo(f"\nbest: {best.name} (val accuracy {best.val_accuracy:.4f}); chosen by {CHOSEN_BY}")


if __name__ == "__main__":
    command()
