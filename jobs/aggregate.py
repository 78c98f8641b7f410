"""`aquarium aggregate`: leaderboard, best model (chosen on validation) to `best/`, HTML report to `report/`."""

from __future__ import annotations

import click

from jobs import config_option, exits_cleanly, open_sweep, store_option


@click.command("aggregate")
@config_option
@store_option
@exits_cleanly
def command(config_path, store):
    """Compare every variant of the sweep; exit 2 when none has finished."""
    from common.report import aggregate, format_table
    from common.store import join

    sweep, target = open_sweep(config_path, store=store)
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
