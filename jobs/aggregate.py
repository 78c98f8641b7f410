"""`aquarium aggregate`: leaderboard, best model (chosen on validation) to `best/`, HTML report to `report/`."""

from __future__ import annotations

import click

from jobs import sweep_job


@sweep_job("aggregate")
def command(sweep, target):
    """Compare every variant of the sweep; exit 2 when none has finished."""
    from common.documents import robustness_text
    from common.report import aggregate, format_table
    from common.store import join

    summary, board = aggregate(target, sweep)
    click.echo(format_table(board))
    best = summary["best"]
    click.echo(f"\nbest: {best['variant']} (val accuracy {best['val_accuracy']:.4f}, "
               f"test accuracy {best['test_accuracy']:.4f}) -> {target.url(summary['best_prefix'])}/")
    click.echo(robustness_text(summary))
    for item in summary["not_finished"]:
        click.echo(f"not finished: {item['variant']} ({item['state']}) {item['error']}".rstrip())
    click.echo(f"report: {target.url(join(sweep.prefix, 'report', 'report.html'))}")


if __name__ == "__main__":
    command()
