"""`aquarium prepare`: fetch, validate and label the dataset zip; write images and tensors to the store."""

from __future__ import annotations

from pathlib import Path

import click

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
@click.option("--prefix", default=None, help="store prefix of the dataset; overrides dataset.prefix [data]")
@click.option("--force", is_flag=True, help="replace a different dataset already prepared at the prefix")
@click.option("--max-unpacked-mb", default=2048, show_default=True, type=click.IntRange(1),
              help="refuse zips that unpack to more than this")
@exits_cleanly
def command(source, store, config_path, sha256, synthesize, image_sizes, fast_decode, prefix, force,
            max_unpacked_mb):
    """Validate the Roboflow zip, label each photo with its dominant class, write tensors to the store."""
    from common.config import load_sweep
    from common.data.prepare import DEFAULT_SIZES, Options, prepare, summary_text
    from common.errors import BadInput

    spec = load_sweep(config_path) if config_path else None
    if spec is None and not (source and store):
        raise BadInput("prepare needs --source and --store (or --config with a sweep spec): e.g. "
                       "aquarium prepare --source aquarium-tfcsv.zip --store file://./store")
    dataset = spec.dataset if spec else None
    opts = Options(
        source=source or dataset.source,
        store=store or spec.store,
        prefix=prefix or (dataset.prefix if dataset else "data"),
        sha256=sha256 if sha256 is not None else (dataset.sha256 if dataset else None),
        synthesize=synthesize if synthesize is not None else bool(dataset and dataset.synthesize),
        sizes=image_sizes or (tuple(spec.image_sizes) if spec else DEFAULT_SIZES),
        fast=fast_decode,
        force=force,
        endpoint=spec.endpoint if spec else None,
        relative_to=Path(config_path).resolve().parent if config_path else None,
        max_bytes=max_unpacked_mb << 20,
    )
    click.echo(summary_text(prepare(opts)))


if __name__ == "__main__":
    command()
