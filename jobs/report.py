"""`aquarium report`: the leaderboard in the terminal, read live from the variants' artefacts (writes nothing)."""

from __future__ import annotations

import click

from jobs import exits_cleanly


@click.command("report")
@click.option("--config", "config_path", default="sweep.yaml", show_default=True, help="sweep spec (YAML)")
@click.option("--store", default=None, help="store URI; overrides the spec's `store`")
@exits_cleanly
def command(config_path, store):
    """Print the leaderboard of the sweep; exit 2 when no variant has finished."""
    from common.config import load_sweep
    from common.report import CHOSEN_BY, choose_best, collect, format_table, leaderboard
    from common.store import open_store

    sweep = load_sweep(config_path)
    results = collect(open_store(store or sweep.store, sweep.endpoint), sweep)
    click.echo(format_table(leaderboard(results)))
    best = choose_best(results)
    click.echo(f"\nbest: {best.name} (val accuracy {best.val_accuracy:.4f}); chosen by {CHOSEN_BY}")


if __name__ == "__main__":
    command()
