"""`aquarium`: one subcommand per job. Subcommands are imported lazily so `--help` never loads TensorFlow."""

from __future__ import annotations

import importlib
import signal
import sys

import click

from common.errors import EXIT_INTERRUPTED

# subcommand -> module in jobs/ that defines `command`
COMMANDS = {
    "prepare": "prepare",
    "train-variant": "train_variant",
    "finetune-variant": "finetune_variant",
    "aggregate": "aggregate",
    "report": "report",
    "predict": "predict",
    "sweep": "sweep",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        return importlib.import_module(f"jobs.{COMMANDS[name]}").command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """aquarium-sweep: train and compare marine-animal classifiers as batch jobs."""


def exit_on_sigterm() -> None:
    """In a container `aquarium` is PID 1, and the kernel drops a signal PID 1 has no handler for: a SIGTERM that
    came before training installed its own (checkpointing) handler kept the pod alive for its whole grace period.
    Until then, SIGTERM simply ends the command with 143."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_INTERRUPTED))


def run() -> None:
    """The console script: SIGTERM handled from the first instruction, then the command."""
    exit_on_sigterm()
    main()


if __name__ == "__main__":
    run()
