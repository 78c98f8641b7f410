"""Data at scale (issue 21): `prepare` and one training epoch on exports of 2,000 and 20,000 photos.

    AQUARIUM_ZIP=../shared/datasets/aquarium-tfcsv.zip .venv/bin/python bench/bench_scale.py \
        [--counts 2000,20000] [--steps 40,10] [--old-ref REF] [--quick]

Each export is generated at run time in /tmp from the real photos (never committed, deleted afterwards): photo k
is photo k mod N of the zip, mirrored on odd rounds, cropped by up to 8 % per side and colour-shifted per
channel, its boxes moved with it (boxes left outside the crop are dropped); 70/20/10 % train/valid/test. Then, each
as its own process (peak RSS from `os.wait4` through bench_memory's lean launcher, so no figure is another's):

  prepare      `aquarium prepare --image-sizes 64,224` into a file store: wall, photos/s, peak RSS;
  train-64     the sweep's first 64-px CNN, `--steps` batches of 2 epochs, each followed by the whole validation
               split (epoch 1 traces; photos/s of epoch 2's training batches, validation not timed);
  train-224    its first 224-px fine-tune (weights none: the step costs the same), the same way;
  ...streamed  the same with `cache_mb: 0` (every split streamed), beside the default `cache_mb`.

With `--old-ref` (a commit before issue 21, e.g. 68f21c0) the smallest count also runs through that commit's
in-memory path (`git archive` into /tmp): one .npz per split, loaded whole. `--real` first runs the real zip
itself the same way (both paths when `--old-ref` is given): the aquarium figures of the "no slowdown for small
data" goal. `--repeat N` runs each count N times, the paths alternating, and prints the medians. `--quick` is the suite's mode: 40
photos from the given zip, 64 px only, 2 steps, about a minute. The last line:
`scale: prepare 20k peak X GB (2k Y GB), train-224 20k peak A GB (2k B GB)`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_memory import PYTHON, peak_rss  # noqa: E402

SPLITS = ("train", "valid", "test")
SHARES = (0.7, 0.2, 0.1)

# A child that trains one variant for 2 epochs of `steps` batches from a prepared store (validation included, as
# in a real run: it is in the peak RSS): prints photos/s of epoch 2's training batches. It runs in whichever checkout is on sys.path (ours, or the old ref's for the in-memory path).
TRAIN = """
import json, sys, tempfile, time
from pathlib import Path
import keras
from common.config import load_sweep
from common.store import open_store
from common import train
spec, store_uri, name, steps, cache_mb = sys.argv[1:6]
sweep = load_sweep(spec)
v = sweep.variant(name)
update = {"epochs": 2, "steps_per_epoch": int(steps), "weights": "none", "early_stopping_patience": 5,
          "precision": "float32"}  # the same arithmetic in both checkouts, whatever `auto` resolves to
if hasattr(v, "cache_mb") and cache_mb != "default":
    update["cache_mb"] = int(cache_mb)
v = v.model_copy(update=update)
store, work = open_store(store_uri), Path(tempfile.mkdtemp())
keras.utils.set_random_seed(v.seed)
data = (train.load_data(store, sweep, v.image_size, work / "tensors") if hasattr(train, "Split")
        else train.load_data(store, sweep, v.image_size))
model = train.build_model(store, v, len(data.classes), work)
times = []
class T(keras.callbacks.Callback):  # the training batches only: validation's pass is not training throughput
    def on_epoch_begin(self, e, logs=None): self.t, self.n = time.perf_counter(), 0
    def on_train_batch_end(self, b, logs=None): self.last, self.n = time.perf_counter(), self.n + 1
    def on_epoch_end(self, e, logs=None): times.append((self.n, self.last - self.t))
train.fit(model, data, v, [T()], 0)
batches, seconds = times[-1]  # fewer than `steps` when the split is smaller (the real zip)
print(json.dumps({"photos_per_s": batches * v.batch_size / seconds}))
"""


def read_export(zip_path: Path) -> list[tuple[bytes, list[list]]]:
    """Every photo of the Roboflow CSV zip with its box rows (class, xmin, ymin, xmax, ymax)."""
    photos = []
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        for csv_name in sorted(n for n in names if n.endswith("_annotations.csv")):
            folder = csv_name.rsplit("/", 1)[0] + "/" if "/" in csv_name else ""
            rows: dict[str, list] = {}
            for r in csv.DictReader(io.StringIO(zf.read(csv_name).decode())):
                rows.setdefault(r["filename"], []).append([r["class"], *(float(r[k]) for k in
                                                                        ("xmin", "ymin", "xmax", "ymax"))])
            photos += [(zf.read(folder + f), boxes) for f, boxes in sorted(rows.items()) if folder + f in names]
    return photos


def variant_photo(jpeg: bytes, boxes: list, k: int, n: int) -> tuple[bytes, int, int, list]:
    """Copy k of a photo: mirrored on odd rounds, cropped, colour-shifted; its boxes moved and clipped."""
    rng = np.random.default_rng(k)
    with Image.open(io.BytesIO(jpeg)) as im:
        img = np.asarray(im.convert("RGB"))
    h, w = img.shape[:2]
    if (k // n) % 2:
        img = img[:, ::-1]
        boxes = [[c, w - x1, y0, w - x0, y1] for c, x0, y0, x1, y1 in boxes]
    left, top, right, bottom = (int(rng.uniform(0, 0.08) * s) for s in (w, h, w, h))
    img = img[top:h - bottom, left:w - right]
    h, w = img.shape[:2]
    moved = []
    for c, x0, y0, x1, y1 in boxes:
        x0, x1 = np.clip([x0 - left, x1 - left], 0, w)
        y0, y1 = np.clip([y0 - top, y1 - top], 0, h)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            moved.append([c, round(x0), round(y0), round(x1), round(y1)])
    shifted = np.clip(img.astype(np.int16) + rng.integers(-20, 21, 3), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(shifted).save(buf, format="JPEG", quality=90)
    return buf.getvalue(), w, h, moved


def make_export(photos, count: int, path: Path) -> Path:
    """A Roboflow CSV zip of `count` generated photos (stored, not deflated: JPEGs do not compress)."""
    rows = {s: [] for s in SPLITS}
    cuts = np.cumsum([int(count * s) for s in SHARES[:-1]])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for k in range(count):
            split = SPLITS[int(np.searchsorted(cuts, k, side="right"))]
            jpeg, w, h, boxes = variant_photo(*photos[k % len(photos)], k, len(photos))
            name = f"gen{k:06d}.jpg"
            zf.writestr(f"{split}/{name}", jpeg)
            rows[split] += [[name, w, h, *b] for b in boxes] or []
        for split in SPLITS:
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"])
            writer.writerows(rows[split])
            zf.writestr(f"{split}/_annotations.csv", out.getvalue())
    return path


def spec_for(tmp: Path, config: Path) -> tuple[Path, dict]:
    """The sweep spec with its first 64-px CNN and first 224-px fine-tune; (path, {label: variant name}). Each
    checkout gets its own sweep.yaml's variants (an older one does not know today's keys)."""
    raw = yaml.safe_load(config.read_text())
    variants = raw["variants"]
    defaults = raw.get("defaults", {})

    def first(kind, size):
        return next(v for v in variants if v.get("kind", defaults.get("kind", "cnn")) == kind
                    and v.get("image_size", defaults.get("image_size", 64)) == size)

    chosen = {"train-64": first("cnn", 64), "train-224": first("finetune", 224)}
    raw["variants"] = [{k: v for k, v in c.items() if k != "extends"} | {"name": c["name"]} for c in chosen.values()]
    raw.pop("searches", None)  # a search's base may name a variant left out here
    path = tmp / f"scale-{len(list(tmp.glob('scale-*')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, {label: c["name"] for label, c in chosen.items()}


def run_prepare(root: Path, zip_path: Path, store: Path, sizes: list[int], log: Path) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of `aquarium prepare` of `root`'s checkout."""
    cmd = [PYTHON, "-m", "jobs.cli", "prepare", "--source", str(zip_path), "--store", str(store),
           "--image-sizes", ",".join(map(str, sizes)), "--max-entries", "100000", "--max-unpacked-mb", "20000"]
    mib, seconds, code = peak_rss(["env", f"PYTHONPATH={root}", "sh", "-c", f'cd "{root}" && exec "$@"', "-",
                                   *cmd], log)
    if code:
        sys.exit(f"bench_scale: prepare of {root} exited {code}:\n{log.read_text()[-2000:]}")
    return mib, seconds


def run_train(root: Path, spec: Path, store: Path, name: str, steps: int, cache_mb: str, log: Path):
    """(peak RSS MiB, photos/s of epoch 2) of one variant's training process."""
    cmd = [PYTHON, "-c", TRAIN, str(spec), str(store), name, str(steps), str(cache_mb)]
    mib, _, code = peak_rss(["env", f"PYTHONPATH={root}", "sh", "-c", f'cd "{root}" && exec "$@"', "-", *cmd], log)
    if code:
        sys.exit(f"bench_scale: training {name} in {root} exited {code}:\n{log.read_text()[-2000:]}")
    last = [line for line in log.read_text().splitlines() if line.startswith("{")][-1]
    return mib, json.loads(last)["photos_per_s"]


def median(rows: list[dict]) -> dict:
    """Each figure's median over repeated runs (a row: prepare figures, and per training label mib, photos_s)."""
    return {k: ({f: float(np.median([r[k][f] for r in rows])) for f in rows[0][k]} if isinstance(v, dict)
                else float(np.median([r[k] for r in rows]))) for k, v in rows[0].items()}


def flat(row: dict) -> dict:
    return {(f"{k} {f}" if isinstance(v, dict) else k): x for k, v in row.items()
            for f, x in (v.items() if isinstance(v, dict) else [(None, v)])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="2000,20000")
    parser.add_argument("--steps", default="40,10", help="training batches per epoch at 64,224 px")
    parser.add_argument("--old-ref", default=None,
                        help="a commit (or a folder of its files) of the in-memory path, run at the smallest count")
    parser.add_argument("--config", default=str(ROOT / "sweep.yaml"))
    parser.add_argument("--zip", default=os.environ.get("AQUARIUM_ZIP")
                        or str(ROOT.parent / "shared" / "datasets" / "aquarium-tfcsv.zip"))
    parser.add_argument("--quick", action="store_true", help="the suite's mode: 40 photos, 64 px, 2 steps")
    parser.add_argument("--real", action="store_true", help="also the real zip itself, before the exports")
    parser.add_argument("--repeat", type=int, default=1, help="runs per count, the paths alternating (medians)")
    args = parser.parse_args()
    sizes = [64] if args.quick else [64, 224]
    if args.quick:
        args.counts, args.steps = "40", "2,1"
    counts = [int(c) for c in args.counts.split(",") if c]  # none: `--real` alone
    steps = dict(zip((64, 224), map(int, args.steps.split(","))))
    if not Path(args.zip).is_file():
        sys.exit(f"bench_scale: dataset zip {args.zip} not found: set AQUARIUM_ZIP or --zip")
    photos = read_export(Path(args.zip))
    print(f"{len(photos)} source photos from {args.zip}; nproc {os.cpu_count()}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        roots = {"sharded": ROOT}
        if args.old_ref and Path(args.old_ref).is_dir():  # a folder that holds that commit's files
            roots["in-memory (old)"] = Path(args.old_ref)
        elif args.old_ref:
            old = tmp / "old"
            old.mkdir()
            archive = subprocess.run(["git", "archive", args.old_ref], cwd=ROOT, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            roots["in-memory (old)"] = old
        specs = {path: spec_for(tmp, Path(args.config) if root == ROOT else root / "sweep.yaml")
                 for path, root in roots.items()}
        for count in ([0] if args.real else []) + counts:  # 0: the real zip itself
            zip_path = make_export(photos, count, tmp / f"export-{count}.zip") if count else Path(args.zip)
            print(f"\n{count or len(photos)} photos{'' if count else ' (the real zip)'}: export "
                  f"{zip_path.stat().st_size / 1e6:.0f} MB", flush=True)
            for _ in range(args.repeat):  # the paths alternate: the shared machine's load drifts between runs
                for path, root in roots.items():
                    if path != "sharded" and count and count != min(counts):
                        continue  # the old path holds everything in memory: only where it still fits
                    store = tmp / f"store-{count}-{len(results)}"
                    mib, seconds = run_prepare(root, zip_path, store, sizes, tmp / "prepare.log")
                    n = count or len(photos)
                    row = {"prepare_mib": mib, "prepare_s": seconds, "prepare_photos_s": n / seconds}
                    print(f"  {path:16} prepare: {seconds:7.1f} s, {n / seconds:6.1f} photos/s, peak {mib:6.0f} MiB",
                          flush=True)
                    spec, names = specs[path]
                    for label, size in (("train-64", 64), ("train-224", 224))[:len(sizes)]:
                        modes = [("", "default")] + ([(" streamed", "0")] if path == "sharded" else [])
                        for suffix, cache_mb in modes:
                            mib, rate = run_train(root, spec, store, names[label], steps[size], cache_mb,
                                                  tmp / "train.log")
                            row[label + suffix] = {"mib": mib, "photos_s": rate}
                            print(f"  {path:16} {label + suffix:18}: {rate:6.1f} photos/s, peak {mib:6.0f} MiB "
                                  f"({steps[size]} steps)", flush=True)
                    results.setdefault((count, path), []).append(row)
                    shutil.rmtree(store, ignore_errors=True)
            if args.repeat > 1:
                for (c, path), rows in results.items():
                    if c == count:
                        print(f"  {path:16} median of {len(rows)}: " + ", ".join(
                            f"{k} {v:.1f}" for k, v in flat(median(rows)).items()), flush=True)
            if count:
                zip_path.unlink()
    if not counts:
        return
    small, big = min(counts), max(counts)
    a, b = median(results[big, "sharded"]), median(results[small, "sharded"])
    label = "train-224" if "train-224" in a else "train-64"
    print(f"\nscale: prepare {big / 1000:g}k peak {a['prepare_mib'] / 1024:.2f} GB ({small / 1000:g}k "
          f"{b['prepare_mib'] / 1024:.2f} GB), {label} {big / 1000:g}k peak {a[label]['mib'] / 1024:.2f} GB "
          f"({small / 1000:g}k {b[label]['mib'] / 1024:.2f} GB)")


if __name__ == "__main__":
    main()
