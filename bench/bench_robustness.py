"""Does the chosen model answer for the photo or its frame? Framed copies of the real test photos, models side by side.

    .venv/bin/python bench/bench_robustness.py [--config sweep.yaml] [--split test] [MODEL ...]

Each MODEL is anything `aquarium predict --model` takes (default `best`, the sweep's chosen model; name a
baseline beside it, e.g. a variant trained without frame-robust augmentation). The photos are the split's
original JPEGs as `prepare` keeps them in the store, byte for byte, with its labels; every kind of copy of
`common.robustness.COPIES` is made from each and classified through `predict`'s own preprocessing, with border
trimming off (the model itself) and on (what `predict` does by default). Printed per copy and model: agreement
with the model's answer on the original, and accuracy. The issue's bar: agreement >= 95 % with trimming off.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def split_photos(store, prefix: str, split: str) -> list[tuple[str, bytes]]:
    """(class, original JPEG bytes) of every labelled photo of `split`, as `prepare` keeps them."""
    rows = [r for r in csv.DictReader(io.StringIO(store.get_text(f"{prefix}/labels.csv"))) if r["split"] == split]
    return [(r["label"], store.get_bytes(f"{prefix}/images/{split}/{r['label']}/{r['filename']}")) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=["best"])
    parser.add_argument("--config", default="sweep.yaml")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    args = parser.parse_args()

    from common.config import load_sweep, resolve
    from common.predict import load
    from common.robustness import COPIES, model_classifier, robustness_of
    from common.store import open_store

    sweep = resolve(load_sweep(args.config))
    photos = split_photos(open_store(sweep.store, sweep.endpoint), sweep.dataset.prefix, args.split)
    models = {}
    for ref in args.models:
        loaded = load(ref, sweep)
        models[ref] = (model_classifier(loaded.model, loaded.sizes), [loaded.classes.index(c) for c, _ in photos])
        print(f"{ref}: {loaded.source} ({loaded.size_text} px)")
    result = robustness_of(models, [jpeg for _, jpeg in photos])
    print(f"\n{len(photos)} {args.split} photos; agreement with the answer on the original / accuracy, per copy\n")
    head = " | ".join(f"{ref} off | {ref} trimmed" for ref in args.models)
    print(f"| copy | {head} |\n|---|" + "---|---|" * len(args.models))
    print("| originals | " + " | ".join(f"acc {result[r]['accuracy']:.3f} | " for r in args.models) + " |")
    for copy in COPIES:
        cells = []
        for ref in args.models:
            row = result[ref]["copies"][copy]
            cells += [f"{row['agreement']:.3f} / {row['accuracy']:.3f}",
                      f"{row['trimmed_agreement']:.3f} / {row['trimmed_accuracy']:.3f}"]
        print(f"| {copy} | " + " | ".join(cells) + " |")
    cells = []
    for ref in args.models:
        r = result[ref]
        cells += [f"**{r['agreement']:.3f}** (min {r['min_agreement']:.3f})",
                  f"{r['trimmed_agreement']:.3f} (min {r['trimmed_min_agreement']:.3f})"]
    print("| mean agreement | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
