"""`aquarium sweep ...`: run a whole sweep locally or in Docker, plan/submit/stop it on Kubernetes, show status."""

from __future__ import annotations

import click

from jobs import exits_cleanly

config_option = click.option("--config", "config_path", default="sweep.yaml", show_default=True,
                             type=click.Path(dir_okay=False), help="sweep spec (YAML)")
store_option = click.option("--store", default=None, help="store URI; overrides the spec's `store`")


@click.group("sweep")
def command():
    """Whole-sweep commands."""
