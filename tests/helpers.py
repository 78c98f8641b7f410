"""What many test files need: the checkout's root and the two ways to run the `aquarium` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def aquarium(*args, env: dict | None = None, cwd=ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m jobs.cli ARGS` as its own process, the way the executor and a pod run a job, with the user's
    environment (TensorFlow's log level is the CLI's own default, so stderr is what a user sees)."""
    env = dict(os.environ if env is None else env)
    return subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def cli(command=None, *args):
    """A click command (default: the whole `aquarium` group) in this process, through click's CliRunner."""
    from click.testing import CliRunner

    if command is None:
        from jobs.cli import main as command
    return CliRunner().invoke(command, [str(a) for a in args])
