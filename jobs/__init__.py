"""Thin click entrypoints: parse options, call `common/`, exit with the right code."""

from __future__ import annotations

import functools
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep job logs readable: errors only from TF

import click

from common.errors import EXIT_TRANSIENT, AquariumError


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
