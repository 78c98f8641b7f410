"""`aquarium`: one subcommand per job. Subcommands are imported lazily so `--help` never loads TensorFlow."""

from __future__ import annotations

import importlib

import click

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


if __name__ == "__main__":
    main()
