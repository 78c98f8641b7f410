"""`aquarium train-variant`: train one from-scratch CNN variant of a sweep (one pod's work)."""

from __future__ import annotations

import logging
import sys

import click

from jobs import config_option, exits_cleanly, open_sweep, store_option


def variant_command(kind: str, name: str, summary: str) -> click.Command:
    """The train-variant and finetune-variant commands differ only in the kind of variant they accept."""

    @click.command(name, help=summary)
    @config_option
    @click.option("--variant", "variant_name", required=True, help="variant name in the spec")
    @store_option
    @click.option("--force", is_flag=True, help="retrain even when a finished result with this config exists")
    @exits_cleanly
    def command(config_path, variant_name, store, force):
        from common.errors import BadInput

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
        sweep, target = open_sweep(config_path, store=store)
        variant = sweep.variant(variant_name)
        if variant.kind != kind:
            raise BadInput(f"variant {variant_name!r} is of kind {variant.kind!r}: run `aquarium {variant.job}`")
        from common.train import run_variant  # TensorFlow loads only once the arguments are known to be good
        result = run_variant(target, sweep, variant, force=force)
        if result.get("pruned"):
            click.echo(f"{variant_name}: pruned after epoch {result['epoch']} (stopped early by its search)")
        elif result.get("skipped"):
            click.echo(f"{variant_name}: skipped (already finished with config {variant.config_hash})")
        else:
            click.echo(f"{variant_name}: val accuracy {result['val_accuracy']:.4f}, "
                       f"test accuracy {result['test_accuracy']:.4f}, best epoch {result['best_epoch']}")

    return command


command = variant_command("cnn", "train-variant", "Train one from-scratch CNN variant of a sweep.")

if __name__ == "__main__":
    command()
