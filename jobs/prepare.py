"""`aquarium prepare`: fetch, validate and label the dataset zip; write images and tensors to the store."""

from __future__ import annotations

from pathlib import Path

import click

from common.config import FORMATS
from common.data.source import MAX_ENTRIES
from jobs import exits_cleanly


def _sizes(ctx, param, value):
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated pixel sizes, e.g. 64,224") from None
    if not sizes:
        raise click.BadParameter("give at least one size, e.g. 64,224")
    return sizes


@click.command("prepare")
@click.option("--source", default=None, help="dataset zip: path, file://, https://, s3://BUCKET/KEY or Google Drive "
                                             "link/id; overrides dataset.source")
@click.option("--store", default=None, help="store URI (s3://BUCKET/PREFIX or file:///DIR); overrides `store`")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="sweep spec (YAML): dataset, store and image sizes come from it")
@click.option("--sha256", default=None, help="expected sha256 of the zip; overrides dataset.sha256 ('' skips it)")
@click.option("--synthesize/--no-synthesize", default=None,
              help="add train images with the dominant class painted away; overrides dataset.synthesize")
@click.option("--image-sizes", callback=_sizes, default=None,
              help="tensor sizes in px, e.g. 64,224 [default: the spec's variant sizes, else 64,224]")
@click.option("--fast-decode/--full-decode", default=True, show_default=True,
              help="decode JPEGs downscaled in the DCT domain before resizing")
@click.option("--format", "fmt", default=None, type=click.Choice(FORMATS),
              help="export format: tfcsv, coco, yolo, folders, or auto (detect from the content); overrides "
                   "dataset.format [auto]")
@click.option("--prefix", default=None, help="store prefix of the dataset; overrides dataset.prefix [data]")
@click.option("--force", is_flag=True, help="replace a different dataset already prepared at the prefix")
@click.option("--max-unpacked-mb", default=2048, show_default=True, type=click.IntRange(1),
              help="refuse zips that unpack to more than this")
@click.option("--max-entries", default=MAX_ENTRIES, show_default=True, type=click.IntRange(1),
              help="refuse zips with more entries than this")
@exits_cleanly
def command(source, store, config_path, sha256, synthesize, image_sizes, fast_decode, fmt, prefix, force,
            max_unpacked_mb, max_entries):
    """Validate the dataset zip, label each photo with its dominant class, write tensors to the store."""
    from common.data.prepare import prepare, summary_text

    given = dict(source=source, sha256=sha256, synthesize=synthesize, prefix=prefix, format=fmt)
    opts = _options(config_path, store, given, image_sizes, fast=fast_decode, force=force,
                    max_bytes=max_unpacked_mb << 20, max_entries=max_entries)
    click.echo(summary_text(prepare(opts)))


def _options(config_path, store, given: dict, image_sizes, **settings):
    """prepare's options: the resolved spec (`config.resolve` applies --source, --store, --sha256,
    --synthesize, --prefix and --format), or without a spec the command line alone (classes from the data)."""
    from common.config import load_sweep, only_given, resolve
    from common.data.prepare import Options
    from common.errors import BadInput
    from common.store import s3_endpoint

    sizes = only_given(sizes=image_sizes)
    if config_path:
        sweep = resolve(load_sweep(config_path), store=store, **given)
        return Options.from_sweep(sweep, relative_to=Path(config_path).resolve().parent, **sizes, **settings)
    if not (given["source"] and store):
        raise BadInput("prepare needs --source and --store (or --config with a sweep spec): e.g. "
                       "aquarium prepare --source aquarium-tfcsv.zip --store file://./store")
    return Options(store=store, endpoint=s3_endpoint(), **only_given(**given), **sizes, **settings)


if __name__ == "__main__":
    command()
