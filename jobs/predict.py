"""`aquarium predict`: classify JPEG photos or folders of them with a trained model; CSV on stdout."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import click

from jobs import exits_cleanly


@click.command("predict")
@click.option("--model", "model_ref", required=True,
              help="`best` (the sweep's chosen model), a store key or prefix, an s3:// or file:// URI, or a local path")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="sweep spec; needed for `best` and store keys (default sweep.yaml when it exists)")
@click.option("--store", default=None, help="store URI; overrides the spec's `store`")
@click.option("--trim-borders/--no-trim-borders", "trim", default=True, show_default=True,
              help="cut a uniform frame (letterbox bars, a border) off each photo before classifying it")
@click.argument("images", nargs=-1, required=True)
@exits_cleanly
def command(model_ref, config_path, store, trim, images):
    """Print `file,predicted,p_<class>...` per image, as each batch is classified (a progress bar on stderr when
    it is a terminal). Unreadable, non-JPEG or corrupt files get one error line each on stderr while the others
    are still classified; the exit code is then 2."""
    from common.config import load_sweep, resolve
    from common.errors import EXIT_BAD_INPUT
    from common.predict import classify, csv_header, csv_row, expand, load, progress_bar

    if config_path is None and Path("sweep.yaml").is_file():
        config_path = "sweep.yaml"
    sweep = resolve(load_sweep(config_path), store=store) if config_path else None
    loaded = load(model_ref, sweep, store)
    click.echo(f"model: {loaded.source} ({loaded.size_text} px, classes {', '.join(loaded.classes)})", err=True)
    files, notes = expand(list(images))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(csv_header(loaded.classes))
    failed, start = 0, time.perf_counter()
    with progress_bar(len(files)) as advance:
        for p in classify(loaded, files, trim):
            if p.error:
                failed += 1
                click.echo(f"error: {p.file}: {p.error}", err=True)
            else:
                writer.writerow(csv_row(p, loaded.classes))
                sys.stdout.flush()
            advance()
    seconds = time.perf_counter() - start
    click.echo(f"classified {len(files) - failed} of {len(files)} files in {seconds:.1f} s "
               f"({(len(files) - failed) / max(seconds, 1e-9):.1f} photos/s)", err=True)
    if failed or not files:
        click.echo(f"error: {failed} of {len(files)} files could not be classified (see above)"
                   if files else "error: no JPEG files found in the given paths", err=True)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    command()
