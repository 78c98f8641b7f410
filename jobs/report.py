"""`aquarium report`: the leaderboard in the terminal, read live from the variants' artefacts (writes nothing)."""

from __future__ import annotations

import click

from jobs import config_option, exits_cleanly, open_sweep, store_option


@click.command("report")
@config_option
@store_option
@exits_cleanly
def command(config_path, store):
    """Print the leaderboard of the sweep; exit 2 when no variant has finished."""
    from common.report import CHOSEN_BY, choose_best, collect, format_table, leaderboard

    sweep, target = open_sweep(config_path, store=store)
    results = collect(target, sweep)
    click.echo(format_table(leaderboard(results)))
    best = choose_best(results)
    click.echo(f"\nbest: {best.name} (val accuracy {best.val_accuracy:.4f}); chosen by {CHOSEN_BY}")


if __name__ == "__main__":
    command()
