"""Thin click entrypoints: parse options, call `common/`, exit with the right code."""

from __future__ import annotations

import functools
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep job logs readable: errors only from TF

import click

from common.errors import EXIT_TRANSIENT, AquariumError


config_option = click.option("--config", "config_path", default="sweep.yaml", show_default=True,
                             type=click.Path(dir_okay=False), help="sweep spec (YAML)")
store_option = click.option("--store", default=None, help="store URI; overrides the spec's `store`")


def open_sweep(config_path: str, **overrides):
    """The sweep spec with the command line's overrides applied (`config.resolve`: --store wins over `store:`,
    the S3 endpoint decided once), and its store."""
    from common.config import load_sweep, resolve
    from common.store import open_store

    sweep = resolve(load_sweep(config_path), **overrides)
    return sweep, open_store(sweep.store, sweep.endpoint)


def exits_cleanly(fn):
    """Run a job body; on a known error print one line (what, where, how to fix) and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AquariumError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except (ConnectionError, TimeoutError) as e:
            click.echo(f"error: transient: {e}", err=True)
            sys.exit(EXIT_TRANSIENT)

    return wrapper


def sweep_job(name: str):
    """A job that reads the sweep's store: `--config` and `--store`, the resolved sweep and its store handed to
    the body as (sweep, store), known errors as one line and their exit code. The body's docstring is its help."""

    def decorate(body):
        @click.command(name, help=body.__doc__)
        @config_option
        @store_option
        @exits_cleanly
        def command(config_path, store):
            return body(*open_sweep(config_path, store=store))

        return command

    return decorate
