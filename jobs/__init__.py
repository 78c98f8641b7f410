"""Thin click entrypoints: parse options, call `common/`, exit with the right code."""

from __future__ import annotations

import functools
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep job logs readable: errors only from TF

import click

from common.errors import EXIT_TRANSIENT, AquariumError, from_os_error


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


EXIT_BROKEN_PIPE = 141  # what a shell reports for a process that SIGPIPE ended: `cat`, `grep` ... | head


def exits_cleanly(fn):
    """Run a job body; on a known error print one line (what, where, how to fix) and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AquariumError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except BrokenPipeError:  # the reader went away (`predict ... | head`): stop quietly, as `cat` would
            _quiet_stdout()
            sys.exit(EXIT_BROKEN_PIPE)
        except (ConnectionError, TimeoutError) as e:
            click.echo(f"error: transient: {e}", err=True)
            sys.exit(EXIT_TRANSIENT)
        except OSError as e:  # a local file or the output itself: disk full, read-only, a file in the way
            _quiet_stdout()
            err = from_os_error(e, "writing the output (stdout)" if e.filename is None else "local file",
                                "fix the path or its permissions, or write the output elsewhere")
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)

    return wrapper


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a full or closed output stays quiet."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


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
