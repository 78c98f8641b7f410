"""`aquarium aggregate`: leaderboard, best model (chosen on validation) to `best/`, HTML report to `report/`."""

from __future__ import annotations

import click

from jobs import exits_cleanly


@click.command("aggregate")
@click.option("--config", "config_path", default="sweep.yaml", show_default=True, help="sweep spec (YAML)")
@click.option("--store", default=None, help="store URI; overrides the spec's `store`")
@exits_cleanly
def command(config_path, store):
    """Compare every variant of the sweep; exit 2 when none has finished."""
    from common.config import load_sweep
    from common.report import aggregate, format_table
    from common.store import join, open_store

    sweep = load_sweep(config_path)
    target = open_store(store or sweep.store, sweep.endpoint)
    summary, board = aggregate(target, sweep)
    click.echo(format_table(board))
    best = summary["best"]
    click.echo(f"\nbest: {best['variant']} (val accuracy {best['val_accuracy']:.4f}, "
               f"test accuracy {best['test_accuracy']:.4f}) -> {target.url(summary['best_prefix'])}/")
    for item in summary["not_finished"]:
        click.echo(f"not finished: {item['variant']} ({item['state']}) {item['error']}".rstrip())
    click.echo(f"report: {target.url(join(sweep.prefix, 'report', 'report.html'))}")


if __name__ == "__main__":
    command()
