"""Benchmark `prepare` on the real Aquarium zip: seconds per 100 images, fast (DCT) vs full JPEG decode.

    .venv/bin/python bench/bench_prepare.py          # AQUARIUM_ZIP=... or ../shared/datasets/aquarium-tfcsv.zip

The source is a local file, so no download is timed. Three kinds of run, each into a fresh temporary file store
at 64 and 224 px: the whole job as a process (`python -m jobs.prepare`: interpreter, TensorFlow import,
everything), then in process -- TensorFlow already imported -- with the fast decode and with the full decode.
Each is repeated (BENCH_REPEAT, default 2) and the best time is reported: the machine is shared, and the minimum
is the least noisy estimate. The two tensor sets are compared pixel by pixel (mean absolute difference, 0..255
scale). Goal: <= 2 s per 100 images.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIZES = (64, 224)
SPLITS = ("train", "valid", "test")


def main() -> None:
    zip_path = Path(os.environ.get("AQUARIUM_ZIP") or ROOT.parent / "shared" / "datasets" / "aquarium-tfcsv.zip")
    if not zip_path.is_file():
        sys.exit(f"bench_prepare: dataset zip {zip_path} not found: set AQUARIUM_ZIP")
    from common.data.prepare import Options, prepare
    from common.store import open_store

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        tmp = Path(tmp)
        repeat = int(os.environ.get("BENCH_REPEAT", "2"))
        job_s = float("inf")
        for r in range(repeat):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "jobs.prepare", "--source", str(zip_path), "--store",
                            str(tmp / f"job{r}"), "--image-sizes", ",".join(map(str, SIZES))],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            job_s = min(job_s, time.perf_counter() - t)

        t = time.perf_counter()
        import common.pipeline  # noqa: F401  (TensorFlow import, timed on its own)
        import_s = time.perf_counter() - t

        runs = {"fast": float("inf"), "full": float("inf")}
        for r in range(repeat):
            for name, fast in (("fast", True), ("full", False)):
                store = tmp / name
                open_store(str(store)).delete_prefix("data")
                t = time.perf_counter()
                summary = prepare(Options(source=str(zip_path), store=str(store), sizes=SIZES, fast=fast),
                                  log=lambda msg: None)
                runs[name] = min(runs[name], time.perf_counter() - t)
        images = sum(summary["images"].values())

        from common.shards import read_split

        diffs = {}
        for size in SIZES:
            total, count = 0.0, 0
            for split in SPLITS:
                a, b = (read_split(open_store(str(tmp / n)), f"data/tensors/{size}", split, tmp / "read")
                        for n in ("fast", "full"))
                assert list(a["filenames"]) == list(b["filenames"])
                d = np.abs(a["images"].astype(np.int16) - b["images"].astype(np.int16))
                total += float(d.sum())
                count += d.size
            diffs[size] = total / count

    per100 = {k: v / images * 100 for k, v in {"job": job_s, **runs}.items()}
    print(f"prepare on {zip_path.name}: {images} labelled images, sizes {list(SIZES)}, {os.cpu_count()} CPUs, "
          f"best of {repeat}, load average {os.getloadavg()[0]:.1f}")
    print("| run | seconds | s / 100 images |")
    print("|---|---:|---:|")
    print(f"| whole job as a process (fast decode, incl. ~{import_s:.1f} s TensorFlow import) "
          f"| {job_s:.1f} | {per100['job']:.2f} |")
    print(f"| in process, fast (DCT-domain downscaled) decode | {runs['fast']:.1f} | {per100['fast']:.2f} |")
    print(f"| in process, full decode | {runs['full']:.1f} | {per100['full']:.2f} |")
    print()
    print("| size | mean abs pixel difference fast vs full (0..255) |")
    print("|---:|---:|")
    for size in SIZES:
        print(f"| {size} | {diffs[size]:.3f} |")
    goal = "met" if per100["job"] <= 2.0 else "NOT met"
    print(f"\ngoal <= 2 s per 100 images (whole job): {goal}")


if __name__ == "__main__":
    main()
