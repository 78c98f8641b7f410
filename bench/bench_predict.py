"""`aquarium predict` at a camera's day of photos: throughput and peak memory, streaming vs the old design.

    .venv/bin/python bench/bench_predict.py [--counts 2000,20000] [--models cnn-e,mnv3-a] [--photo 1024x768]

Generates `--distinct` JPEG photos (busy colour fields at `--photo` size, like the dataset's 1024x768 frames) and
hard-links them into folders of 2,000 and 20,000 files -- real files for predict's folder expansion and reads,
though the page cache holds them after the first pass. Models come from the project's own builders with random
weights (no training needed): cnn-e (64 px, the sweep's chosen CNN) and mnv3-a (MobileNetV3Large at 224 px,
`weights: none`). Each run is its own process:

- **new**: `python -m jobs.cli predict --model DIR FOLDER > /dev/null` (tf.data streaming, trimming on);
- **old**: the design before issue 13 (below, `old_predict`): every photo decoded one at a time into a list,
  then classified in batches of 32, the CSV printed at the end. Run only where its images fit in `--old-max-gb`
  (20,000 at 224 px would need ~12 GB), so at 224 px the old design is measured at 2,000 photos only.

Peak RSS is the kernel's ru_maxrss of each child from `os.wait4`, started by a bare Python launcher (see
bench_memory.py for why). photos/s counts the classification loop only (after TensorFlow import and model load),
as each child reports it; wall s is the whole process.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Runs argv[1:] as its child (stdout to /dev/null) and prints "<exit code> <child's ru_maxrss KiB> <seconds>".
LAUNCHER = """
import os, subprocess, sys, time
t = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, time.perf_counter() - t)
"""
# name -> (sweep.yaml variant, overrides): the chosen 64-px CNN, the 224-px MobileNetV3, and a small 224-px CNN
# (three narrow convs, global pooling) whose cost is mostly decoding: the memory figure at 20,000 photos.
MODELS = {"cnn-e": ("cnn-e", {}), "mnv3-a": ("mnv3-a", {"weights": "none"}),
          "cnn-224": ("cnn-a", {"image_size": 224, "conv_layers": 3, "filters": [8, 16, 32], "global_pool": True,
                                "dense_units": 0})}


def old_predict(model_dir: str, folder: str) -> None:
    """The pre-streaming predict, kept here as the baseline: decode all, then classify, then print."""
    import tensorflow as tf

    from common.predict import csv_header, expand, load, preprocess

    loaded = load(model_dir)
    files, _ = expand([folder])
    start = time.perf_counter()
    ready = [preprocess(f, loaded.sizes, trim=False)[0] for f in files]  # the old design held every image at once
    probs = [np.asarray(loaded.model(np.stack(ready[i:i + 32]), training=False))  # its batches of 32
             for i in range(0, len(ready), 32)]
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(csv_header(loaded.classes))
    for f, p in zip(files, np.concatenate(probs)):
        writer.writerow([f, loaded.classes[int(np.argmax(p))], *(f"{x:.6f}" for x in p)])
    seconds = time.perf_counter() - start
    print(f"classified {len(files)} of {len(files)} files in {seconds:.1f} s ({len(files) / seconds:.1f} photos/s)",
          file=sys.stderr)


def make_photos(folder: Path, distinct: int, width: int, height: int) -> list[Path]:
    """`distinct` busy JPEGs: smooth colour fields, noise and discs, so JPEG decoding does real work."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    paths = []
    for i in range(distinct):
        a = rng.uniform(40, 200, 3)
        img = a + 50 * np.stack([np.sin(6 * xx + i), np.cos(5 * yy + i), np.sin(4 * (xx + yy))], -1)
        img += rng.normal(0, 8, (height, width, 3))
        for _ in range(3):
            cx, cy, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.2)]
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 255, 3)
        path = folder / f"distinct-{i:04d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=88)
        paths.append(path)
    return paths


def link_folder(folder: Path, photos: list[Path], count: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        os.link(photos[i % len(photos)], folder / f"photo-{i:06d}.jpg")
    return folder


def save_model(folder: Path, name: str) -> tuple[Path, int]:
    """model.keras from the project's builders (random weights) plus the metrics.json predict reads classes from;
    returns (folder, input size)."""
    import yaml

    from common.config import CLASSES, parse_sweep
    from common.models import build_cnn, build_finetune

    spec = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    base, overrides = MODELS[name]
    spec["variants"] = [{**v, **overrides, "name": name} for v in spec["variants"] if v["name"] == base]
    variant = parse_sweep(spec).variant(name)
    model = (build_finetune(variant, len(CLASSES), None) if variant.kind == "finetune"
             else build_cnn(variant, len(CLASSES)))
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    (folder / "metrics.json").write_text('{"classes": %s}' % str(list(CLASSES)).replace("'", '"'))
    return folder, variant.image_size


def measure(cmd: list[str]) -> dict:
    """Peak RSS (MiB), wall s and the child's own photos/s line, for one child process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], cwd=ROOT, capture_output=True, text=True,
                            env=env)
    code, kib, seconds = result.stdout.strip().splitlines()[-1].split()
    line = next((x for x in result.stderr.splitlines() if x.startswith("classified ")), "")
    if int(code) != 0 or not line:
        sys.exit(f"bench_predict: {' '.join(cmd[-4:])} failed ({code}):\n{result.stderr[-2000:]}")
    rate = float(line.rsplit("(", 1)[1].split()[0])
    return {"rss_mib": int(kib) / 1024, "wall_s": float(seconds), "photos_s": rate}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", nargs="+", default=["cnn-e=2000", "mnv3-a=2000", "cnn-224=2000,20000"],
                        help="MODEL=COUNT[,COUNT...] for MODEL in " + ", ".join(MODELS))
    parser.add_argument("--photo", default="1024x768", help="WIDTHxHEIGHT of the generated photos")
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--old-max-gb", type=float, default=2.0, help="run the old design only below this")
    parser.add_argument("--old", nargs=2, metavar=("MODEL_DIR", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.old:
        return old_predict(*args.old)
    width, height = map(int, args.photo.split("x"))
    runs = {name: [int(c) for c in counts.split(",")] for name, counts in (r.split("=") for r in args.runs)}
    counts = sorted({c for cs in runs.values() for c in cs})
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        tmp = Path(tmp)
        photos = make_photos(tmp / "distinct", args.distinct, width, height)
        folders = {n: link_folder(tmp / f"n{n}", photos, n) for n in counts}
        print("| model | px | photos | new photos/s | new peak RSS MiB | new wall s "
              "| old photos/s | old peak RSS MiB | old wall s |\n|---|---|---|---|---|---|---|---|---|", flush=True)
        rows = []
        for name, model_counts in runs.items():
            model, size = save_model(tmp / name, name)
            model = str(model)
            for n in model_counts:
                new = measure([sys.executable, "-m", "jobs.cli", "predict", "--model", model, str(folders[n])])
                fits = n * size * size * 3 * 4 / 2**30 <= args.old_max_gb
                old = measure([sys.executable, __file__, "--old", model, str(folders[n])]) if fits else None
                rows.append((name, size, n, new, old))
                print_row(*rows[-1], flush=True)
    print(f"\nload average before: {load}; after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"{os.cpu_count()} CPUs; photos {width}x{height}, {args.distinct} distinct")


def print_row(name, size, n, new, old, flush=False) -> None:
    def cells(m):
        return (f"{m['photos_s']:.0f} | {m['rss_mib']:.0f} | {m['wall_s']:.0f}" if m
                else "not run (would hold {:.1f} GB of images) | | ".format(n * size * size * 12 / 1e9))
    print(f"| {name} | {size} | {n} | {cells(new)} | {cells(old)} |", flush=flush)


if __name__ == "__main__":
    main()
